// A plugin service that answers with JSON built from every request read.
//
//   - echo: on the host's thread. ?format=text or ?format=html answer with
//     BodyText or BodyHTML instead; ?redirect=URL redirects.
//   - echo_async: the same JSON, built on another goroutine after the handler
//     returned (the SDK detaches the phase; End completes it).
//   - echo_panic: panics (the phase ends with an error; the process lives).
package main

import "C"

import (
	"net/url"
	"time"

	sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"
)

func main() {}

// everything reads every request field (and the payload).
func everything(ctx *sdk.PhaseRequestFilter) map[string]any {
	req := ctx.Request()
	h := req.Headers()
	return map[string]any{
		"method":       req.Method(),
		"url":          req.URL(),
		"path":         req.Path(),
		"query":        req.Query(),
		"params":       req.Params(),
		"host":         req.Host(),
		"client_ip":    req.ClientIP(),
		"x_user":       req.Header("x-user"),
		"accept":       h.Get("accept"),
		"headers":      h.GetAll(),
		"body":         string(req.RawBody()),
		"bytes":        req.Bytes(),
		"timestamp_ok": req.Timestamp() > 0,
		"payload":      ctx.GetPayload(),
		"status":       ctx.Response().Status(),
	}
}

func init() {
	plugin := sdk.NewNylonPlugin()
	plugin.AddPhaseHandler("echo", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			res := ctx.Response()
			q, _ := url.ParseQuery(ctx.Request().Query())
			switch {
			case q.Get("redirect") != "":
				res.Redirect(q.Get("redirect"), 307)
			case q.Get("format") == "text":
				res.BodyText("path=" + ctx.Request().Path())
			case q.Get("format") == "html":
				res.BodyHTML("<p>" + ctx.Request().Path() + "</p>")
			default:
				res.SetStatus(200)
				res.BodyJSON(everything(ctx))
			}
			ctx.End()
		})
	})
	plugin.AddPhaseHandler("echo_async", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			go func() {
				time.Sleep(2 * time.Millisecond)
				res := ctx.Response()
				res.SetHeader("x-async", "1")
				res.BodyJSON(everything(ctx))
				ctx.End()
			}()
		})
	})
	plugin.AddPhaseHandler("echo_panic", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			ctx.Response().SetHeader("x-never", "applied")
			panic("boom")
		})
	})
}
