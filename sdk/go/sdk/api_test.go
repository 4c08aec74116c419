package sdk_test

// The upstream Nylon Go SDK's public API, signature by signature: a plugin
// written against upstream must build against this package by changing its
// import path only, so none of these may change. `go vet ./...` type-checks
// this file (tests/api/go.rs runs it).

import (
	"testing"

	sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"
)

type config struct {
	Name string `json:"name"`
}

var (
	// The plugin.
	_ func() *sdk.NylonPlugin                                       = sdk.NewNylonPlugin
	_ func(*sdk.NylonPlugin, func(map[string]interface{}))          = (*sdk.NylonPlugin).Initialize
	_ func(func(config)) func(map[string]interface{})               = sdk.NewInitializer[config]
	_ func(*sdk.NylonPlugin, func())                                = (*sdk.NylonPlugin).Shutdown
	_ func(*sdk.NylonPlugin, string, func(phase *sdk.PhaseHandler)) = (*sdk.NylonPlugin).AddPhaseHandler
	_ int32                                                         = sdk.PhaseHandler{}.SessionId
	_ func(*sdk.PhaseHandler, func(*sdk.PhaseRequestFilter))        = (*sdk.PhaseHandler).RequestFilter
	_ func(*sdk.PhaseHandler, func(*sdk.PhaseResponseFilter))       = (*sdk.PhaseHandler).ResponseFilter
	_ func(*sdk.PhaseHandler, func(*sdk.PhaseResponseBodyFilter))   = (*sdk.PhaseHandler).ResponseBodyFilter
	_ func(*sdk.PhaseHandler, func(*sdk.PhaseLogging))              = (*sdk.PhaseHandler).Logging

	// Phase 1.
	_ func(*sdk.PhaseRequestFilter) *sdk.Request                  = (*sdk.PhaseRequestFilter).Request
	_ func(*sdk.PhaseRequestFilter) *sdk.Response                 = (*sdk.PhaseRequestFilter).Response
	_ func(*sdk.PhaseRequestFilter) map[string]any                = (*sdk.PhaseRequestFilter).GetPayload
	_ func(*sdk.PhaseRequestFilter)                               = (*sdk.PhaseRequestFilter).Next
	_ func(*sdk.PhaseRequestFilter)                               = (*sdk.PhaseRequestFilter).End
	_ func(*sdk.PhaseRequestFilter, sdk.WebSocketCallbacks) error = (*sdk.PhaseRequestFilter).WebSocketUpgrade

	// Phase 2.
	_ func(*sdk.PhaseResponseFilter) *sdk.Request      = (*sdk.PhaseResponseFilter).Request
	_ func(*sdk.PhaseResponseFilter) *sdk.Response     = (*sdk.PhaseResponseFilter).Response
	_ func(*sdk.PhaseResponseFilter) map[string]any    = (*sdk.PhaseResponseFilter).GetPayload
	_ func(*sdk.PhaseResponseFilter)                   = (*sdk.PhaseResponseFilter).Next
	_ func(*sdk.PhaseResponseFilter, string, string)   = (*sdk.PhaseResponseFilter).SetResponseHeader
	_ func(*sdk.PhaseResponseFilter, string)           = (*sdk.PhaseResponseFilter).RemoveResponseHeader
	_ func(*sdk.PhaseResponseFilter, uint16)           = (*sdk.PhaseResponseFilter).SetResponseStatus
	_ func(*sdk.PhaseResponseFilter, string) string    = (*sdk.PhaseResponseFilter).GetRequestHeader
	_ func(*sdk.PhaseResponseFilter) map[string]string = (*sdk.PhaseResponseFilter).GetRequestHeaders

	// Phases 3 and 4.
	_ func(*sdk.PhaseResponseBodyFilter) *sdk.Request   = (*sdk.PhaseResponseBodyFilter).Request
	_ func(*sdk.PhaseResponseBodyFilter) *sdk.Response  = (*sdk.PhaseResponseBodyFilter).Response
	_ func(*sdk.PhaseResponseBodyFilter) map[string]any = (*sdk.PhaseResponseBodyFilter).GetPayload
	_ func(*sdk.PhaseResponseBodyFilter)                = (*sdk.PhaseResponseBodyFilter).Next
	_ func(*sdk.PhaseLogging) *sdk.Request              = (*sdk.PhaseLogging).Request
	_ func(*sdk.PhaseLogging) *sdk.Response             = (*sdk.PhaseLogging).Response
	_ func(*sdk.PhaseLogging) map[string]any            = (*sdk.PhaseLogging).GetPayload
	_ func(*sdk.PhaseLogging)                           = (*sdk.PhaseLogging).Next

	// The session (upstream exports its methods too).
	_ func(*sdk.NylonHttpPluginCtx) map[string]any = (*sdk.NylonHttpPluginCtx).GetPayload
	_ func(*sdk.NylonHttpPluginCtx)                = (*sdk.NylonHttpPluginCtx).Next
	_ func(*sdk.NylonHttpPluginCtx)                = (*sdk.NylonHttpPluginCtx).End
	_ sdk.HttpPluginFunc                           = func(ctx *sdk.NylonHttpPluginCtx) {}

	// Request.
	_ func(*sdk.Request) string            = (*sdk.Request).Method
	_ func(*sdk.Request) string            = (*sdk.Request).URL
	_ func(*sdk.Request) string            = (*sdk.Request).Path
	_ func(*sdk.Request) string            = (*sdk.Request).Query
	_ func(*sdk.Request) map[string]string = (*sdk.Request).Params
	_ func(*sdk.Request) string            = (*sdk.Request).Host
	_ func(*sdk.Request) string            = (*sdk.Request).ClientIP
	_ func(*sdk.Request, string) string    = (*sdk.Request).Header
	_ func(*sdk.Request) *sdk.Headers      = (*sdk.Request).Headers
	_ func(*sdk.Request) []byte            = (*sdk.Request).RawBody
	_ func(*sdk.Request) int64             = (*sdk.Request).Bytes
	_ func(*sdk.Request) int64             = (*sdk.Request).Timestamp
	_ func(*sdk.Headers, string) string    = (*sdk.Headers).Get
	_ func(*sdk.Headers) map[string]string = (*sdk.Headers).GetAll

	// Response.
	_ func(*sdk.Response, string, string)                  = (*sdk.Response).SetHeader
	_ func(*sdk.Response, string)                          = (*sdk.Response).RemoveHeader
	_ func(*sdk.Response, uint16)                          = (*sdk.Response).SetStatus
	_ func(*sdk.Response, []byte)                          = (*sdk.Response).BodyRaw
	_ func(*sdk.Response, string) *sdk.Response            = (*sdk.Response).BodyText
	_ func(*sdk.Response, string) *sdk.Response            = (*sdk.Response).BodyHTML
	_ func(*sdk.Response, any) *sdk.Response               = (*sdk.Response).BodyJSON
	_ func(*sdk.Response, string, ...uint16) *sdk.Response = (*sdk.Response).Redirect
	_ func(*sdk.Response) (*sdk.ResponseStream, error)     = (*sdk.Response).Stream
	_ func(*sdk.ResponseStream, []byte) (int, error)       = (*sdk.ResponseStream).Write
	_ func(*sdk.ResponseStream) error                      = (*sdk.ResponseStream).End
	_ func(*sdk.Response) []byte                           = (*sdk.Response).ReadBody
	_ func(*sdk.Response) int                              = (*sdk.Response).Status
	_ func(*sdk.Response) int64                            = (*sdk.Response).Bytes
	_ func(*sdk.Response) map[string]string                = (*sdk.Response).Headers
	_ func(*sdk.Response) int64                            = (*sdk.Response).Duration
	_ func(*sdk.Response) string                           = (*sdk.Response).Error

	// WebSocket.
	_ = sdk.WebSocketCallbacks{
		OnOpen:          func(ws *sdk.WebSocketConn) {},
		OnMessageText:   func(ws *sdk.WebSocketConn, msg string) {},
		OnMessageBinary: func(ws *sdk.WebSocketConn, data []byte) {},
		OnClose:         func(ws *sdk.WebSocketConn) {},
		OnError:         func(ws *sdk.WebSocketConn, err string) {},
	}
	_ func(*sdk.WebSocketConn, string) error         = (*sdk.WebSocketConn).SendText
	_ func(*sdk.WebSocketConn, []byte) error         = (*sdk.WebSocketConn).SendBinary
	_ func(*sdk.WebSocketConn) error                 = (*sdk.WebSocketConn).Close
	_ func(*sdk.WebSocketConn, string) error         = (*sdk.WebSocketConn).JoinRoom
	_ func(*sdk.WebSocketConn, string) error         = (*sdk.WebSocketConn).LeaveRoom
	_ func(*sdk.WebSocketConn, string, string) error = (*sdk.WebSocketConn).BroadcastText
	_ func(*sdk.WebSocketConn, string, []byte) error = (*sdk.WebSocketConn).BroadcastBinary

	// Constants upstream exports.
	_ uint32 = sdk.MethodIDMapping[sdk.NylonMethodReadRequestTimestamp]
	_        = []int{sdk.StatusOK, sdk.StatusFound, sdk.StatusBadRequest, sdk.StatusUnauthorized,
		sdk.StatusForbidden, sdk.StatusNotFound, sdk.StatusTooManyRequests, sdk.StatusInternalServerError}
	_ = []string{sdk.ContentTypeJSON, sdk.ContentTypeText, sdk.ContentTypeHTML, sdk.HeaderContentType,
		sdk.HeaderContentLength, sdk.HeaderLocation, sdk.HeaderTransferEncoding}
)

func TestCloneCopies(t *testing.T) {
	b := []byte("view")
	s := sdk.Clone(string(b))
	kept := sdk.CloneBytes(b)
	m := sdk.CloneMap(map[string]string{"k": "v"})
	b[0] = 'X'
	if s != "view" || string(kept) != "view" || m["k"] != "v" {
		t.Fatalf("a clone changed with its source: %q %q %v", s, kept, m)
	}
	if sdk.CloneMap(nil) != nil || sdk.CloneBytes(nil) != nil || sdk.Clone("") != "" {
		t.Fatal("the clone of nothing is nothing")
	}
}

func TestNewInitializerGivesTheZeroConfigForNil(t *testing.T) {
	var got config
	got.Name = "unset"
	sdk.NewInitializer(func(c config) { got = c })(nil)
	if got != (config{}) {
		t.Fatalf("got %+v", got)
	}
	sdk.NewInitializer(func(c config) { got = c })(map[string]interface{}{"name": "n"})
	if got.Name != "n" {
		t.Fatalf("got %+v", got)
	}
}
