// The benchmark's request scenario (benches/README.md, row `request`) as a Go
// plugin: the logic of the `scenario` entry of examples/v2_plugin.rs and
// examples/rust_plugin.rs, line for line, written against the upstream SDK's
// API. A phase error there (Err) is a panic here: the SDK recovers it and the
// phase ends with an error, as there.
package main

import "C"

import sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"

func main() {}

func init() {
	plugin := sdk.NewNylonPlugin()
	plugin.AddPhaseHandler("scenario", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			payload := ctx.GetPayload()
			user, _ := payload["user"].(string)
			limit, _ := payload["limit"].(float64)
			req := ctx.Request()
			path := req.Path()
			agent := req.Header("user-agent")
			count, bytes := 0, 0
			for n, v := range req.Headers().GetAll() {
				count++
				bytes += len(n) + len(v)
			}
			if path == "" ||
				agent == "" ||
				count != 8 ||
				bytes == 0 ||
				user == "" ||
				limit == 0 {
				panic("scenario request is incomplete")
			}
			res := ctx.Response()
			res.SetHeader("x-scenario", "1")
			res.SetHeader("x-user", "alice")
			ctx.Next()
		})
		phase.ResponseFilter(func(ctx *sdk.PhaseResponseFilter) {
			status := ctx.Response().Status()
			class := "error"
			if status < 400 {
				class = "ok"
			}
			ctx.SetResponseHeader("x-status-class", class)
			ctx.Next()
		})
		phase.Logging(func(ctx *sdk.PhaseLogging) {
			sink(ctx.Response().Duration())
			sinkString(ctx.Request().ClientIP())
			ctx.Next()
		})
	})
}

// sink and sinkString keep a value alive, as std::hint::black_box does in
// the Rust versions.
var (
	sunk       int64
	sunkString int
)

func sink(v int64)        { sunk += v }
func sinkString(s string) { sunkString += len(s) }
