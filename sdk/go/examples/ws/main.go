// A WebSocket echo with a room: every connection joins "lobby"; a text
// message is echoed ("echo: " + msg) and broadcast to the room; a binary one
// is echoed and broadcast as is; "bye" leaves the room and closes.
package main

import "C"

import (
	"strconv"

	sdk "github.com/nylon-transport/nylon-transport/sdk/go/sdk"
)

func main() {}

func init() {
	plugin := sdk.NewNylonPlugin()
	plugin.AddPhaseHandler("ws", func(phase *sdk.PhaseHandler) {
		seen := 0 // per connection: events are delivered one at a time
		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			err := ctx.WebSocketUpgrade(sdk.WebSocketCallbacks{
				OnOpen: func(ws *sdk.WebSocketConn) {
					_ = ws.JoinRoom("lobby")
					_ = ws.SendText("welcome")
				},
				OnMessageText: func(ws *sdk.WebSocketConn, msg string) {
					seen++
					if msg == "bye" {
						_ = ws.LeaveRoom("lobby")
						_ = ws.Close()
						return
					}
					_ = ws.SendText("echo " + strconv.Itoa(seen) + ": " + msg)
					_ = ws.BroadcastText("lobby", msg)
				},
				OnMessageBinary: func(ws *sdk.WebSocketConn, data []byte) {
					seen++
					_ = ws.SendBinary(data)
					_ = ws.BroadcastBinary("lobby", data)
				},
				OnClose: func(ws *sdk.WebSocketConn) {
					_ = ws.LeaveRoom("lobby")
				},
				OnError: func(ws *sdk.WebSocketConn, err string) {
					_ = ws.SendText("error: " + err)
				},
			})
			if err != nil {
				ctx.Next()
			}
		})
	})
}
