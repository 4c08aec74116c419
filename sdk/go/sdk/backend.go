package sdk

// # The backend contract
//
// The package has one public API (plugin.go, context.go, websocket.go) and
// two backends, chosen at build time:
//
//   - the v2 backend (files v2_*.go and v2_glue.c, build constraint
//     `!nylon_legacy`, the default): one exported `nylon_v2_plugin` table;
//   - the legacy backend (build constraint `nylon_legacy`): the six symbols of
//     the legacy ABI (`initialize`, `register_session_stream`, ...).
//
// Exactly one backend is compiled in. The API files never import "C" and never
// name a backend type except through the contract below, so either backend can
// change its insides without touching them.
//
// ## What the API side gives a backend (defined in the neutral files)
//
//	type field uint32    // fieldMethod .. fieldError: byte-string reads (= v2 field ids)
//	type number uint32   // numberStatus .. numberResponseBytes: integer reads (= v2 number ids)
//	type command uint8   // cmdSetHeader .. cmdWsBroadcast: buffered commands
//	type flow uint32     // flowNext, flowEnd, flowStreamEnd, flowWebSocket (= v2 flows)
//	type wsEvent uint32  // wsOpen, wsText, wsBinary, wsClose, wsError (= v2 kinds)
//
//	func pluginInitialize(config []byte)  // runs the Initialize handler (upstream semantics)
//	func pluginShutdown()                 // runs the Shutdown handler
//	func entryNames() []string            // entries in AddPhaseHandler order; id = index
//	func entryIndex(name string) (int, bool)
//
//	// NylonHttpPluginCtx is the per-session state. A backend may pool and reuse
//	// them; open resets every API-side field.
//	func (s *NylonHttpPluginCtx) open(entry int, sessionID int32) bool
//	      // runs the entry's AddPhaseHandler function on the calling goroutine;
//	      // false when the entry is unknown or the function panicked
//	func (s *NylonHttpPluginCtx) hasHandler(phase int) bool
//	      // phase 1..4: did the session set a handler? (else the phase is a plain Next)
//	func (s *NylonHttpPluginCtx) runPhase(phase int) (panicked bool, msg string)
//	      // runs the phase handler (the default one calls Next) under recover,
//	      // on the calling goroutine; starts a new "read epoch" (per-phase caches)
//	func (s *NylonHttpPluginCtx) runWebSocket(kind wsEvent, data string) (panicked bool, msg string)
//	      // delivers one event to the WebSocketCallbacks; `data` may be a view
//	func (s *NylonHttpPluginCtx) release()
//	      // at close: drops every user reference the session holds
//
// ## What a backend provides (defined in the backend's files)
//
//	type backendSession struct{ ... }  // the field `be` of NylonHttpPluginCtx
//
//	// Reads. ok is false when the session has no live call (then v is zero).
//	// A string may be a view of host memory: valid until the phase call ends.
//	func (s *NylonHttpPluginCtx) beField(f field) (v string, ok bool)
//	func (s *NylonHttpPluginCtx) beNumber(n number) (v uint64, ok bool)
//	func (s *NylonHttpPluginCtx) beHeader(name string) (v string, ok bool)  // case-insensitive, first value
//	func (s *NylonHttpPluginCtx) beHeaderAt(i int) (name, value string, ok bool)         // request headers, in order
//	func (s *NylonHttpPluginCtx) beResponseHeaderAt(i int) (name, value string, ok bool) // response headers
//
//	// Commands, in call order. The arguments are copied (or sent) before the
//	// call returns. errClosed when the phase is over.
//	//   cmdSetHeader(a=name, b=value) cmdRemoveHeader(a=name) cmdSetStatus(n)
//	//   cmdSetBody(a=body) cmdStreamHeader() cmdStreamWrite(a=data)
//	//   cmdWsUpgrade() cmdWsSend(n=wsText|wsBinary, a=data) cmdWsClose()
//	//   cmdWsRoom(a=room, n=1 join / 0 leave) cmdWsBroadcast(a=room, b=data, n=kind)
//	func (s *NylonHttpPluginCtx) beCommand(c command, a, b string, n uint32) error
//
//	// Ends the current phase with f, from any goroutine, once; a later call is
//	// errClosed. flowWebSocket follows cmdWsUpgrade.
//	func (s *NylonHttpPluginCtx) beFinish(f flow) error
//
// The compile-time check at the bottom of this file fails the build when a
// backend misses one of them or changes a signature.
//
// Build tags: none (v2), `nylon_legacy` (legacy). A change to this contract is
// committed with a message starting "GO BACKEND CHANGE:".

import "errors"

// Byte-string reads; the values are the v2 ABI's field ids.
type field uint32

const (
	fieldMethod       field = 1
	fieldPath         field = 2
	fieldQuery        field = 3
	fieldHost         field = 4
	fieldClientIP     field = 5
	fieldURL          field = 6
	fieldRequestBody  field = 7
	fieldPayload      field = 8
	fieldParams       field = 9
	fieldResponseBody field = 10
	fieldError        field = 11
)

// Integer reads; the values are the v2 ABI's number ids.
type number uint32

const (
	numberStatus        number = 1
	numberRequestBytes  number = 2
	numberTimestamp     number = 3
	numberDuration      number = 4
	numberResponseBytes number = 5
)

// Buffered commands.
type command uint8

const (
	cmdSetHeader command = iota + 1
	cmdRemoveHeader
	cmdSetStatus
	cmdSetBody
	cmdStreamHeader
	cmdStreamWrite
	cmdWsUpgrade
	cmdWsSend
	cmdWsClose
	cmdWsRoom
	cmdWsBroadcast
)

// How a phase ends; the values are the v2 ABI's flows.
type flow uint32

const (
	flowNext      flow = 1
	flowEnd       flow = 2
	flowStreamEnd flow = 3
	flowWebSocket flow = 4
)

// WebSocket event and frame kinds; the values are the v2 ABI's kinds.
type wsEvent uint32

const (
	wsOpen   wsEvent = 1
	wsText   wsEvent = 2
	wsBinary wsEvent = 3
	wsClose  wsEvent = 4
	wsError  wsEvent = 5
)

// errClosed is what a command or a flow returns once its phase is over.
var errClosed = errors.New("nylon: the phase is over; this call no longer reaches the host")

// The compile-time check of the contract: both backends must provide exactly
// these signatures.
var _ = struct {
	field          func(*NylonHttpPluginCtx, field) (string, bool)
	number         func(*NylonHttpPluginCtx, number) (uint64, bool)
	header         func(*NylonHttpPluginCtx, string) (string, bool)
	headerAt       func(*NylonHttpPluginCtx, int) (string, string, bool)
	responseHeader func(*NylonHttpPluginCtx, int) (string, string, bool)
	command        func(*NylonHttpPluginCtx, command, string, string, uint32) error
	finish         func(*NylonHttpPluginCtx, flow) error
	session        backendSession
}{
	(*NylonHttpPluginCtx).beField,
	(*NylonHttpPluginCtx).beNumber,
	(*NylonHttpPluginCtx).beHeader,
	(*NylonHttpPluginCtx).beHeaderAt,
	(*NylonHttpPluginCtx).beResponseHeaderAt,
	(*NylonHttpPluginCtx).beCommand,
	(*NylonHttpPluginCtx).beFinish,
	backendSession{},
}
