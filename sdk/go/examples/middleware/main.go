// A middleware: it sets response headers and the status from its payload,
// and rewrites the response body chunk by chunk (upper-cased), keeping every
// chunk. Payload: {"header": NAME, "value": V, "status": N, "remove": NAME,
// "suffix": S}. Config: {"prefix": P} (the value of x-mw-prefix); after the
// host unloads an instance, x-mw-prefix says "after-shutdown".
package main

import "C"

import (
	"bytes"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"
)

func main() {}

// Config is the plugin's configuration.
type Config struct {
	Prefix string `json:"prefix"`
}

var prefix atomic.Value // string

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func init() {
	plugin := sdk.NewNylonPlugin()
	prefix.Store("")
	plugin.Initialize(sdk.NewInitializer(func(c Config) {
		prefix.Store(c.Prefix)
	}))
	plugin.Shutdown(func() {
		prefix.Store("after-shutdown")
	})
	plugin.AddPhaseHandler("middleware", func(phase *sdk.PhaseHandler) {
		// Per-session state: the number of body chunks seen.
		chunks := 0

		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			p := ctx.GetPayload()
			res := ctx.Response()
			res.SetHeader("x-mw-prefix", prefix.Load().(string))
			res.SetHeader("x-mw-user", ctx.Request().Header("X-User"))
			res.SetHeader("x-mw-session", strconv.Itoa(int(phase.SessionId)))
			if name := str(p, "header"); name != "" {
				res.SetHeader(name, str(p, "value"))
			}
			ctx.Next()
		})
		phase.ResponseFilter(func(ctx *sdk.PhaseResponseFilter) {
			p := ctx.GetPayload()
			res := ctx.Response()
			// What the response looked like at phase start.
			names := make([]string, 0, 8)
			for k := range res.Headers() {
				names = append(names, k)
			}
			sort.Strings(names)
			ctx.SetResponseHeader("x-mw-upstream-headers", strings.Join(names, ","))
			ctx.SetResponseHeader("x-mw-upstream-status", strconv.Itoa(res.Status()))
			if name := str(p, "remove"); name != "" {
				ctx.RemoveResponseHeader(name)
			}
			if status, ok := p["status"].(float64); ok {
				ctx.SetResponseStatus(uint16(status))
			}
			ctx.SetResponseHeader("x-mw-accept", ctx.GetRequestHeader("accept"))
			ctx.SetResponseHeader("x-mw-request-headers", strconv.Itoa(len(ctx.GetRequestHeaders())))
			ctx.Next()
		})
		phase.ResponseBodyFilter(func(ctx *sdk.PhaseResponseBodyFilter) {
			res := ctx.Response()
			// The host answers this read with this chunk (no body was set in
			// this chunk's phase yet); the body set here replaces this chunk
			// only, so every chunk is kept, each rewritten (upper-cased), and
			// the end-of-stream call (an empty chunk) adds the suffix.
			chunk := res.ReadBody()
			if int64(len(chunk)) != res.Bytes() {
				panic("ReadBody and Bytes disagree")
			}
			chunks++
			out := bytes.ToUpper(chunk)
			if len(chunk) == 0 {
				out = append(out, str(ctx.GetPayload(), "suffix")...)
			}
			res.BodyRaw(out)
			ctx.Next()
		})
		phase.Logging(func(ctx *sdk.PhaseLogging) {
			res := ctx.Response()
			ts := ctx.Request().Timestamp()
			// Too late to change the response; the host still records it.
			res.SetHeader("x-mw-log", strconv.Itoa(chunks)+";"+res.Error()+";"+
				strconv.FormatBool(res.Duration() >= 0 && ts > 0))
			_ = ctx.GetPayload()
			ctx.Next()
		})
	})
}
