// A plugin service that answers with JSON built from every request read.
//
//   - echo: on the host's thread. ?format=text or ?format=html answer with
//     BodyText or BodyHTML instead; ?redirect=URL redirects.
//   - echo_async: the same JSON, built on another goroutine after the handler
//     returned (the SDK detaches the phase; End completes it).
//   - echo_panic: panics (the phase ends with an error; the process lives).
//   - echo_dynamic: its request filter sets a response filter (which adds
//     x-dynamic), as a plugin may: the SDK reads the handlers at each phase.
//   - echo_late: hands its phase to a goroutine that waits for echo_release
//     (run the request with a short timeout: the host gives up first).
//   - echo_release: lets that goroutine read and end its phase, too late, and
//     answers with what the read and the end gave (x-late-read, x-late-end).
package main

import "C"

import (
	"net/url"
	"strconv"
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

// The echo_late goroutine and echo_release.
var (
	release = make(chan struct{}, 1)
	report  = make(chan string, 1)
)

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
	plugin.AddPhaseHandler("echo_late", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			// Read on the host's thread first: the late read below must not
			// answer from what this one saw.
			if ctx.Request().Path() == "" {
				panic("no path")
			}
			go func() {
				<-release
				path := ctx.Request().Path()
				stream, err := ctx.Response().Stream()
				if err == nil {
					err = stream.End()
				}
				report <- strconv.Quote(path) + ";" + strconv.FormatBool(err != nil)
			}()
		})
	})
	plugin.AddPhaseHandler("echo_release", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			release <- struct{}{}
			res := ctx.Response()
			select {
			case r := <-report:
				res.SetHeader("x-late", r)
			case <-time.After(10 * time.Second):
				res.SetHeader("x-late", "no report")
			}
			res.SetStatus(200)
			ctx.End()
		})
	})
	plugin.AddPhaseHandler("echo_dynamic", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			phase.ResponseFilter(func(ctx *sdk.PhaseResponseFilter) {
				ctx.SetResponseHeader("x-dynamic", "1")
				ctx.Next()
			})
			ctx.Next()
		})
	})
}
