package sdk

// WebSocketCallbacks receive a WebSocket connection's events, in order, one
// at a time. A message passed to a callback is a view of host memory, valid
// until the callback returns (see Clone, CloneBytes).
type WebSocketCallbacks struct {
	OnOpen          func(ws *WebSocketConn)
	OnMessageText   func(ws *WebSocketConn, msg string)
	OnMessageBinary func(ws *WebSocketConn, data []byte)
	OnClose         func(ws *WebSocketConn)
	OnError         func(ws *WebSocketConn, err string)
}

// WebSocketConn sends on the connection. Its methods work inside a callback;
// the frames go out, in order, when the callback returns.
type WebSocketConn struct {
	ctx *NylonHttpPluginCtx
}

// SendText sends a text frame.
func (ws *WebSocketConn) SendText(msg string) error {
	return ws.ctx.beCommand(cmdWsSend, msg, "", uint32(wsText))
}

// SendBinary sends a binary frame.
func (ws *WebSocketConn) SendBinary(data []byte) error {
	return ws.ctx.beCommand(cmdWsSend, stringOf(data), "", uint32(wsBinary))
}

// Close closes the connection (no OnClose follows a close the plugin asked for).
func (ws *WebSocketConn) Close() error {
	return ws.ctx.beCommand(cmdWsClose, "", "", 0)
}

// JoinRoom adds the connection to room.
func (ws *WebSocketConn) JoinRoom(room string) error {
	return ws.ctx.beCommand(cmdWsRoom, room, "", 1)
}

// LeaveRoom removes the connection from room.
func (ws *WebSocketConn) LeaveRoom(room string) error {
	return ws.ctx.beCommand(cmdWsRoom, room, "", 0)
}

// BroadcastText sends a text frame to every connection in room, this one included.
func (ws *WebSocketConn) BroadcastText(room string, msg string) error {
	return ws.ctx.beCommand(cmdWsBroadcast, room, msg, uint32(wsText))
}

// BroadcastBinary sends a binary frame to every connection in room, this one included.
func (ws *WebSocketConn) BroadcastBinary(room string, data []byte) error {
	return ws.ctx.beCommand(cmdWsBroadcast, room, stringOf(data), uint32(wsBinary))
}
