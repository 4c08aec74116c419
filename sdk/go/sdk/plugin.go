package sdk

import (
	"encoding/json"
	"fmt"
	"sync"
)

// NylonPlugin is the plugin singleton; NewNylonPlugin returns it.
type NylonPlugin struct{}

// HttpPluginFunc is the upstream SDK's handler type, kept for plugins that name it.
type HttpPluginFunc func(ctx *NylonHttpPluginCtx)

// The registry: filled by init() functions, read by the backend.
var (
	registryMu   sync.RWMutex
	entryOrder   []string
	entryFuncs   []func(phase *PhaseHandler)
	initHandler  func(map[string]interface{})
	closeHandler func()
	instance     *NylonPlugin
)

// NewNylonPlugin returns the plugin singleton (the same one every time).
func NewNylonPlugin() *NylonPlugin {
	registryMu.Lock()
	defer registryMu.Unlock()
	if instance == nil {
		instance = &NylonPlugin{}
	}
	return instance
}

// NewInitializer wraps fn so that Initialize can call it with the
// configuration decoded into a T. As upstream: the map is re-encoded and
// decoded into T, and decoding errors are ignored, so a configuration that is
// missing or does not fit gives fn the zero (or partly filled) T.
func NewInitializer[T any](fn func(config T)) func(map[string]interface{}) {
	return func(raw map[string]interface{}) {
		var cfg T
		data, _ := json.Marshal(raw)
		_ = json.Unmarshal(data, &cfg)
		fn(cfg)
	}
}

// Initialize sets the function called once when the host loads the plugin,
// with the configuration (a JSON object) decoded into a map: nil when there
// is none or it is not a JSON object.
func (plugin *NylonPlugin) Initialize(fn func(map[string]interface{})) {
	registryMu.Lock()
	initHandler = fn
	registryMu.Unlock()
}

// Shutdown sets the function called when the host unloads the plugin.
func (plugin *NylonPlugin) Shutdown(fn func()) {
	registryMu.Lock()
	closeHandler = fn
	registryMu.Unlock()
}

// AddPhaseHandler registers entry: fn runs once per session (one request,
// as one entry sees it) and sets that session's phase handlers. State that fn
// captures in closures is therefore per request. Registering a name again
// replaces its function. Register entries in init(): a v2 host reads the
// entry list when it loads the library.
func (plugin *NylonPlugin) AddPhaseHandler(entry string, fn func(phase *PhaseHandler)) {
	registryMu.Lock()
	defer registryMu.Unlock()
	for i, name := range entryOrder {
		if name == entry {
			entryFuncs[i] = fn
			return
		}
	}
	entryOrder = append(entryOrder, entry)
	entryFuncs = append(entryFuncs, fn)
}

// PhaseHandler is what an AddPhaseHandler function gets: it sets the handlers
// of one session.
type PhaseHandler struct {
	// SessionId is the host's id of this session.
	SessionId int32

	requestFilter      func(ctx *PhaseRequestFilter)
	responseFilter     func(ctx *PhaseResponseFilter)
	responseBodyFilter func(ctx *PhaseResponseBodyFilter)
	logging            func(ctx *PhaseLogging)
}

// RequestFilter sets the handler of phase 1 (before the request goes upstream).
func (p *PhaseHandler) RequestFilter(fn func(ctx *PhaseRequestFilter)) {
	p.requestFilter = fn
}

// ResponseFilter sets the handler of phase 2 (the response headers).
func (p *PhaseHandler) ResponseFilter(fn func(ctx *PhaseResponseFilter)) {
	p.responseFilter = fn
}

// ResponseBodyFilter sets the handler of phase 3, called once per body chunk.
func (p *PhaseHandler) ResponseBodyFilter(fn func(ctx *PhaseResponseBodyFilter)) {
	p.responseBodyFilter = fn
}

// Logging sets the handler of phase 4 (after the response).
func (p *PhaseHandler) Logging(fn func(ctx *PhaseLogging)) {
	p.logging = fn
}

// ---- The neutral side of the backend contract (see backend.go) ----

// pluginInitialize runs the Initialize handler with config decoded as upstream
// does: a map, nil when config is empty or not a JSON object.
func pluginInitialize(config []byte) {
	registryMu.RLock()
	fn, ok := initHandler, instance != nil
	registryMu.RUnlock()
	if !ok || fn == nil {
		return
	}
	var m map[string]interface{}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &m); err != nil {
			m = nil
		}
	}
	fn(m)
}

// pluginShutdown runs the Shutdown handler.
func pluginShutdown() {
	registryMu.RLock()
	fn := closeHandler
	registryMu.RUnlock()
	if fn != nil {
		fn()
	}
}

// entryNames lists the entries in registration order (an entry's id is its index).
func entryNames() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return append([]string(nil), entryOrder...)
}

// entryIndex finds an entry by name.
func entryIndex(name string) (int, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	for i, n := range entryOrder {
		if n == name {
			return i, true
		}
	}
	return 0, false
}

// entryFunc returns the AddPhaseHandler function of entry id.
func entryFunc(id int) func(*PhaseHandler) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	if id < 0 || id >= len(entryFuncs) {
		return nil
	}
	return entryFuncs[id]
}

// panicMessage renders a recovered value as the upstream-style phase error.
func panicMessage(v interface{}) string {
	return fmt.Sprintf("handler panicked: %v", v)
}
