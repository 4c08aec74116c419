// A plugin service that streams its response: the chunks of its payload
// ({"chunks": [...]}), or "one", "two", "three".
package main

import "C"

import sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"

func main() {}

func init() {
	plugin := sdk.NewNylonPlugin()
	plugin.AddPhaseHandler("stream", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			chunks := []string{"one", "two", "three"}
			if list, ok := ctx.GetPayload()["chunks"].([]any); ok {
				chunks = chunks[:0]
				for _, c := range list {
					s, _ := c.(string)
					chunks = append(chunks, s)
				}
			}
			res := ctx.Response()
			res.SetStatus(200)
			res.SetHeader("content-type", "text/plain")
			stream, err := res.Stream()
			if err != nil {
				ctx.Next()
				return
			}
			for _, c := range chunks {
				if _, err := stream.Write([]byte(c)); err != nil {
					return
				}
			}
			_ = stream.End()
		})
	})
}
