package main

import "C"

import sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"

func main() {}

func init() {
	plugin := sdk.NewNylonPlugin()
	plugin.AddPhaseHandler("scenario", func(phase *sdk.PhaseHandler) {
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			ctx.Next()
		})
	})
}
