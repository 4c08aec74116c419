package sdk

import (
	"encoding/json"
	"sync"
	"sync/atomic"
)

// NylonHttpPluginCtx is one session: one request as one entry sees it. The
// phase contexts, Request, Response and WebSocketConn all point to it. A
// backend may reuse the value for a later session once this one is closed,
// so do not keep it (or anything it returned) past the session.
type NylonHttpPluginCtx struct {
	be backendSession // the backend's part (see backend.go)

	handler PhaseHandler
	pcache  *payloadCache

	// The objects the API hands out, built once per pooled value.
	prf    PhaseRequestFilter
	prsf   PhaseResponseFilter
	prbf   PhaseResponseBodyFilter
	plog   PhaseLogging
	req    Request
	res    Response
	stream ResponseStream
	ws     WebSocketConn

	callbacks WebSocketCallbacks

	// cacheMu guards the per-phase caches below; handlers may call the API
	// from several goroutines.
	cacheMu      sync.Mutex
	epoch        uint64 // one per phase call or WebSocket event
	hdrs         Headers
	hdrsEpoch    uint64
	resHdrs      map[string]string
	resHdrsEpoch uint64
	payload      map[string]any
	payloadDone  bool
}

// payloadCache keeps the last payload an entry parsed, shared by its
// sessions: a payload whose text did not change is not parsed again.
type payloadCache struct {
	cur atomic.Pointer[payloadParsed]
}

type payloadParsed struct {
	raw string
	m   map[string]any
}

var (
	payloadCachesMu sync.Mutex
	payloadCaches   []*payloadCache
)

// cacheFor returns entry id's payload cache.
func cacheFor(id int) *payloadCache {
	payloadCachesMu.Lock()
	defer payloadCachesMu.Unlock()
	for len(payloadCaches) <= id {
		payloadCaches = append(payloadCaches, &payloadCache{})
	}
	return payloadCaches[id]
}

// ---- The neutral side of the backend contract (see backend.go) ----

// open resets s for a new session of entry and runs the entry's
// AddPhaseHandler function; false for an unknown entry or a panic.
func (s *NylonHttpPluginCtx) open(entry int, sessionID int32) (ok bool) {
	fn := entryFunc(entry)
	if fn == nil {
		return false
	}
	if s.pcache == nil || s.req.ctx != s {
		s.prf.ctx, s.prsf.ctx, s.prbf.ctx, s.plog.ctx = s, s, s, s
		s.req.ctx, s.res.ctx, s.ws.ctx = s, s, s
		s.stream.response = &s.res
	}
	s.pcache = cacheFor(entry)
	s.handler = PhaseHandler{SessionId: sessionID}
	s.callbacks = WebSocketCallbacks{}
	s.cacheMu.Lock()
	s.epoch++
	s.payload, s.payloadDone = nil, false
	s.cacheMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			ok = false
		}
	}()
	fn(&s.handler)
	return true
}

// hasHandler reports whether the session set a handler for phase (1..4).
func (s *NylonHttpPluginCtx) hasHandler(phase int) bool {
	switch phase {
	case 1:
		return s.handler.requestFilter != nil
	case 2:
		return s.handler.responseFilter != nil
	case 3:
		return s.handler.responseBodyFilter != nil
	case 4:
		return s.handler.logging != nil
	}
	return false
}

// runPhase runs the handler of phase under recover; the default handler
// calls Next, as upstream's does.
func (s *NylonHttpPluginCtx) runPhase(phase int) (panicked bool, msg string) {
	s.newEpoch()
	defer func() {
		if r := recover(); r != nil {
			panicked, msg = true, panicMessage(r)
		}
	}()
	h := &s.handler
	switch {
	case phase == 1 && h.requestFilter != nil:
		h.requestFilter(&s.prf)
	case phase == 2 && h.responseFilter != nil:
		h.responseFilter(&s.prsf)
	case phase == 3 && h.responseBodyFilter != nil:
		h.responseBodyFilter(&s.prbf)
	case phase == 4 && h.logging != nil:
		h.logging(&s.plog)
	default:
		s.Next()
	}
	return false, ""
}

// runWebSocket delivers one WebSocket event to the session's callbacks.
func (s *NylonHttpPluginCtx) runWebSocket(kind wsEvent, data string) (panicked bool, msg string) {
	s.newEpoch()
	defer func() {
		if r := recover(); r != nil {
			panicked, msg = true, panicMessage(r)
		}
	}()
	cb := &s.callbacks
	switch kind {
	case wsOpen:
		if cb.OnOpen != nil {
			cb.OnOpen(&s.ws)
		}
	case wsText:
		if cb.OnMessageText != nil {
			cb.OnMessageText(&s.ws, data)
		}
	case wsBinary:
		if cb.OnMessageBinary != nil {
			cb.OnMessageBinary(&s.ws, bytesOf(data))
		}
	case wsClose:
		if cb.OnClose != nil {
			cb.OnClose(&s.ws)
		}
	case wsError:
		if cb.OnError != nil {
			cb.OnError(&s.ws, data)
		}
	}
	return false, ""
}

// release drops the user's references when the session closes.
func (s *NylonHttpPluginCtx) release() {
	s.handler = PhaseHandler{}
	s.callbacks = WebSocketCallbacks{}
	s.cacheMu.Lock()
	s.epoch++
	s.payload, s.payloadDone = nil, false
	s.cacheMu.Unlock()
}

func (s *NylonHttpPluginCtx) newEpoch() {
	s.cacheMu.Lock()
	s.epoch++
	s.cacheMu.Unlock()
}

// ---- The session's own methods (upstream exports them) ----

// GetPayload returns the entry's payload (a JSON object) as a map, nil when
// none is configured or it is not an object. It is parsed once per session,
// and not at all when the text equals the previous session's: the map is
// then shared between sessions, so treat it as read-only (copy it to modify).
func (s *NylonHttpPluginCtx) GetPayload() map[string]any {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if s.payloadDone {
		return s.payload
	}
	raw, ok := s.beField(fieldPayload)
	if !ok {
		return nil
	}
	s.payloadDone = true
	s.payload = nil
	if raw == "" {
		return nil
	}
	if p := s.pcache.cur.Load(); p != nil && p.raw == raw {
		s.payload = p.m
		return p.m
	}
	var m map[string]any
	if json.Unmarshal([]byte(raw), &m) != nil {
		m = nil
	}
	s.pcache.cur.Store(&payloadParsed{raw: Clone(raw), m: m})
	s.payload = m
	return m
}

// Next ends the phase and lets the request go on.
func (s *NylonHttpPluginCtx) Next() {
	_ = s.beFinish(flowNext)
}

// End ends the phase and answers the request with the response set so far.
func (s *NylonHttpPluginCtx) End() {
	_ = s.beFinish(flowEnd)
}

// ---- Phase contexts ----

// PhaseRequestFilter is the context of phase 1.
type PhaseRequestFilter struct{ ctx *NylonHttpPluginCtx }

// PhaseResponseFilter is the context of phase 2.
type PhaseResponseFilter struct{ ctx *NylonHttpPluginCtx }

// PhaseResponseBodyFilter is the context of phase 3 (once per body chunk).
type PhaseResponseBodyFilter struct{ ctx *NylonHttpPluginCtx }

// PhaseLogging is the context of phase 4.
type PhaseLogging struct{ ctx *NylonHttpPluginCtx }

// Request reads the request.
func (p *PhaseRequestFilter) Request() *Request { return &p.ctx.req }

// Response sets (and reads) the response.
func (p *PhaseRequestFilter) Response() *Response { return &p.ctx.res }

// GetPayload: see NylonHttpPluginCtx.GetPayload.
func (p *PhaseRequestFilter) GetPayload() map[string]any { return p.ctx.GetPayload() }

// Next ends the phase; the request goes on.
func (p *PhaseRequestFilter) Next() { p.ctx.Next() }

// End ends the phase and answers with the response set so far.
func (p *PhaseRequestFilter) End() { p.ctx.End() }

// WebSocketUpgrade switches the request to a WebSocket and ends the phase;
// cbs then receives the connection's events, in order, one at a time.
func (p *PhaseRequestFilter) WebSocketUpgrade(cbs WebSocketCallbacks) error {
	s := p.ctx
	s.callbacks = cbs
	if err := s.beCommand(cmdWsUpgrade, "", "", 0); err != nil {
		return err
	}
	return s.beFinish(flowWebSocket)
}

// Request reads the request.
func (p *PhaseResponseFilter) Request() *Request { return &p.ctx.req }

// Response sets (and reads) the response.
func (p *PhaseResponseFilter) Response() *Response { return &p.ctx.res }

// GetPayload: see NylonHttpPluginCtx.GetPayload.
func (p *PhaseResponseFilter) GetPayload() map[string]any { return p.ctx.GetPayload() }

// Next ends the phase.
func (p *PhaseResponseFilter) Next() { p.ctx.Next() }

// SetResponseHeader is Response().SetHeader.
func (p *PhaseResponseFilter) SetResponseHeader(key, value string) { p.ctx.res.SetHeader(key, value) }

// RemoveResponseHeader is Response().RemoveHeader.
func (p *PhaseResponseFilter) RemoveResponseHeader(key string) { p.ctx.res.RemoveHeader(key) }

// SetResponseStatus is Response().SetStatus.
func (p *PhaseResponseFilter) SetResponseStatus(status uint16) { p.ctx.res.SetStatus(status) }

// GetRequestHeader is Request().Headers().Get(key): an exact (lower-case) name.
func (p *PhaseResponseFilter) GetRequestHeader(key string) string {
	return p.ctx.req.Headers().Get(key)
}

// GetRequestHeaders is Request().Headers().GetAll().
func (p *PhaseResponseFilter) GetRequestHeaders() map[string]string {
	return p.ctx.req.Headers().GetAll()
}

// Request reads the request.
func (p *PhaseResponseBodyFilter) Request() *Request { return &p.ctx.req }

// Response sets (and reads) the response.
func (p *PhaseResponseBodyFilter) Response() *Response { return &p.ctx.res }

// GetPayload: see NylonHttpPluginCtx.GetPayload.
func (p *PhaseResponseBodyFilter) GetPayload() map[string]any { return p.ctx.GetPayload() }

// Next ends the phase.
func (p *PhaseResponseBodyFilter) Next() { p.ctx.Next() }

// Request reads the request.
func (p *PhaseLogging) Request() *Request { return &p.ctx.req }

// Response reads the response.
func (p *PhaseLogging) Response() *Response { return &p.ctx.res }

// GetPayload: see NylonHttpPluginCtx.GetPayload.
func (p *PhaseLogging) GetPayload() map[string]any { return p.ctx.GetPayload() }

// Next ends the phase.
func (p *PhaseLogging) Next() { p.ctx.Next() }

// ---- Request ----

// Request reads the request. Strings and byte slices it returns are views of
// the host's memory, valid until the phase call ends (see Clone).
type Request struct{ ctx *NylonHttpPluginCtx }

func (r *Request) str(f field) string {
	v, _ := r.ctx.beField(f)
	return v
}

func (r *Request) num(n number) int64 {
	v, _ := r.ctx.beNumber(n)
	return int64(v)
}

// Method is the request method.
func (r *Request) Method() string { return r.str(fieldMethod) }

// URL is scheme://host[:port]path[?query].
func (r *Request) URL() string { return r.str(fieldURL) }

// Path is the URI path.
func (r *Request) Path() string { return r.str(fieldPath) }

// Query is the raw query, without '?'.
func (r *Request) Query() string { return r.str(fieldQuery) }

// Host is the host, without the port.
func (r *Request) Host() string { return r.str(fieldHost) }

// ClientIP is the client's IP address.
func (r *Request) ClientIP() string { return r.str(fieldClientIP) }

// Params are the route params; nil when there are none.
func (r *Request) Params() map[string]string {
	raw := r.str(fieldParams)
	var params map[string]string
	if raw != "" {
		_ = json.Unmarshal(bytesOf(raw), &params)
	}
	return params
}

// Header is the first value of a request header (the name is matched without
// regard to case); "" when absent.
func (r *Request) Header(key string) string {
	v, _ := r.ctx.beHeader(key)
	return v
}

// Headers are the request headers (names lower-case; for a repeated name,
// the last value). The map is the session's, refilled once per phase.
func (r *Request) Headers() *Headers {
	s := r.ctx
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if s.hdrs.headers == nil {
		s.hdrs.headers = make(map[string]string, 16)
	} else if s.hdrsEpoch == s.epoch {
		return &s.hdrs
	}
	m := s.hdrs.headers
	for k := range m {
		delete(m, k)
	}
	for i := 0; ; i++ {
		name, value, ok := s.beHeaderAt(i)
		if !ok {
			break
		}
		m[name] = value
	}
	s.hdrsEpoch = s.epoch
	return &s.hdrs
}

// RawBody is the request body (a view of host memory: do not modify it).
func (r *Request) RawBody() []byte { return bytesOf(r.str(fieldRequestBody)) }

// Bytes is the request's Content-Length (0 when missing or invalid).
func (r *Request) Bytes() int64 { return r.num(numberRequestBytes) }

// Timestamp is when the request started, in milliseconds since the epoch.
func (r *Request) Timestamp() int64 { return r.num(numberTimestamp) }

// ---- Headers ----

// Headers is a read-only set of request headers.
type Headers struct {
	headers map[string]string
}

// Get returns the value of name (an exact, lower-case name), "" when absent.
func (h *Headers) Get(key string) string { return h.headers[key] }

// GetAll returns every header as a map (valid until the phase call ends:
// use CloneMap to keep it).
func (h *Headers) GetAll() map[string]string { return h.headers }

// ---- Response ----

// Response sets the response. Commands are applied in order when the phase
// ends; reads see the response as it was when the phase started.
type Response struct{ ctx *NylonHttpPluginCtx }

// SetHeader sets a response header, replacing every value of that name.
func (r *Response) SetHeader(key, value string) {
	_ = r.ctx.beCommand(cmdSetHeader, key, value, 0)
}

// RemoveHeader removes every value of a response header.
func (r *Response) RemoveHeader(key string) {
	_ = r.ctx.beCommand(cmdRemoveHeader, key, "", 0)
}

// SetStatus sets the response status.
func (r *Response) SetStatus(status uint16) {
	_ = r.ctx.beCommand(cmdSetStatus, "", "", uint32(status))
}

// BodyRaw sets the response body (copied before it returns).
func (r *Response) BodyRaw(body []byte) {
	_ = r.ctx.beCommand(cmdSetBody, stringOf(body), "", 0)
}

// BodyJSON sets Content-Type to JSON and the body to v encoded as JSON.
func (r *Response) BodyJSON(v any) *Response {
	r.SetHeader(HeaderContentType, ContentTypeJSON)
	b, _ := json.Marshal(v)
	r.BodyRaw(b)
	return r
}

// BodyText sets Content-Type to plain text and the body to s.
func (r *Response) BodyText(s string) *Response {
	r.SetHeader(HeaderContentType, ContentTypeText)
	_ = r.ctx.beCommand(cmdSetBody, s, "", 0)
	return r
}

// BodyHTML sets Content-Type to HTML and the body to s.
func (r *Response) BodyHTML(s string) *Response {
	r.SetHeader(HeaderContentType, ContentTypeHTML)
	_ = r.ctx.beCommand(cmdSetBody, s, "", 0)
	return r
}

// Redirect sets the status (302 unless code is given), Location and an
// empty body. It does not end the phase.
func (r *Response) Redirect(url string, code ...uint16) *Response {
	status := uint16(StatusFound)
	if len(code) > 0 {
		status = code[0]
	}
	r.SetStatus(status)
	r.SetHeader(HeaderLocation, url)
	_ = r.ctx.beCommand(cmdSetBody, "", "", 0)
	return r
}

// Stream starts a streamed response: it sets Transfer-Encoding: chunked,
// removes Content-Length, and sends the header. Write the chunks, then End.
func (r *Response) Stream() (*ResponseStream, error) {
	r.SetHeader(HeaderTransferEncoding, "chunked")
	r.RemoveHeader(HeaderContentLength)
	if err := r.ctx.beCommand(cmdStreamHeader, "", "", 0); err != nil {
		return nil, err
	}
	return &r.ctx.stream, nil
}

// ReadBody is the response body: in phase 3, the current chunk (or the body
// a plugin set); a view of host memory, do not modify it.
func (r *Response) ReadBody() []byte {
	v, _ := r.ctx.beField(fieldResponseBody)
	return bytesOf(v)
}

// Status is the response status.
func (r *Response) Status() int {
	v, _ := r.ctx.beNumber(numberStatus)
	return int(v)
}

// Bytes is the length of the response body as ReadBody returns it.
func (r *Response) Bytes() int64 {
	v, _ := r.ctx.beNumber(numberResponseBytes)
	return int64(v)
}

// Headers are the response headers as at phase start (for a repeated name,
// the last value). The map is the session's, refilled once per phase.
func (r *Response) Headers() map[string]string {
	s := r.ctx
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if s.resHdrs == nil {
		s.resHdrs = make(map[string]string, 16)
	} else if s.resHdrsEpoch == s.epoch {
		return s.resHdrs
	}
	m := s.resHdrs
	for k := range m {
		delete(m, k)
	}
	for i := 0; ; i++ {
		name, value, ok := s.beResponseHeaderAt(i)
		if !ok {
			break
		}
		m[name] = value
	}
	s.resHdrsEpoch = s.epoch
	return m
}

// Duration is the time since the request started, in milliseconds.
func (r *Response) Duration() int64 {
	v, _ := r.ctx.beNumber(numberDuration)
	return int64(v)
}

// Error is the proxy's error message, "" when none.
func (r *Response) Error() string {
	v, _ := r.ctx.beField(fieldError)
	return v
}

// ResponseStream writes a streamed response (see Response.Stream).
type ResponseStream struct {
	response *Response
}

// Write sends one chunk (copied before it returns).
func (s *ResponseStream) Write(p []byte) (n int, err error) {
	return len(p), s.response.ctx.beCommand(cmdStreamWrite, stringOf(p), "", 0)
}

// End finishes the streamed response and ends the phase.
func (s *ResponseStream) End() error {
	return s.response.ctx.beFinish(flowStreamEnd)
}

// ---- Keeping what a read returned ----

// Clone returns a copy of s that stays valid after the phase call ends.
func Clone(s string) string {
	if s == "" {
		return ""
	}
	b := make([]byte, len(s))
	copy(b, s)
	return stringOf(b)
}

// CloneBytes returns a copy of b that stays valid after the phase call ends.
func CloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// CloneMap returns a copy of m (keys and values copied too).
func CloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[Clone(k)] = Clone(v)
	}
	return out
}
