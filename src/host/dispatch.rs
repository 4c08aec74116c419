//! What the host does with each plugin-to-host method: the semantics of
//! `legacy-abi.md` §4, shared by every transport.
//!
//! [`dispatch`] decodes one message, applies a command to the [`HttpContext`]
//! or encodes the reply of a read, and says whether the phase goes on. The
//! encodings are behind [`ReplyEncoding`] so each transport keeps its own cost
//! profile (the baseline builds a FlatBuffer per header read, as today's host).
#![forbid(unsafe_code)]

use std::fmt;

use crate::abi::legacy::{Method, MethodKind, SDK_ERROR_METHOD};
use crate::codec::{decode_header_kv, scalar};
use crate::host::context::{HttpContext, WsMessage};

/// How a phase ended when the plugin ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseEnd {
    /// `NEXT`: continue.
    Next,
    /// `END`: the plugin answered (or the host answered, after a failed upgrade).
    End,
    /// `SET_RESPONSE_STREAM_END` or `WEBSOCKET_CLOSE`: the response is finished.
    StreamEnd,
}

/// What the driver does after one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A command was applied; keep reading.
    Continue,
    /// A read was answered: send the reply buffer with the same method id.
    Reply,
    /// The phase ended.
    End(PhaseEnd),
    /// The WebSocket handshake succeeded: send event 350 and switch to WebSocket mode.
    Upgraded,
}

/// Why one message failed; an error for its session alone.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatchError {
    /// A method id the ABI does not define.
    UnknownMethod(u32),
    /// A host-to-plugin event id sent by the plugin.
    WrongDirection(u32),
    /// A payload that does not decode.
    Malformed {
        /// The method.
        method: u32,
        /// Why.
        reason: String,
    },
    /// The plugin's SDK reported a handler error or panic.
    Plugin(String),
    /// The downstream refused the command (e.g. WebSocket not open).
    Downstream {
        /// The method.
        method: u32,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMethod(m) => write!(f, "unknown method {m}"),
            Self::WrongDirection(m) => write!(f, "method {m} is a host-to-plugin event"),
            Self::Malformed { method, reason } => {
                write!(f, "malformed payload for method {method}: {reason}")
            }
            Self::Plugin(msg) => write!(f, "plugin error: {msg}"),
            Self::Downstream { method, reason } => write!(f, "method {method} failed: {reason}"),
        }
    }
}

impl std::error::Error for DispatchError {}

/// The encodings of read replies, one implementation per transport.
pub trait ReplyEncoding {
    /// Appends a `NylonHttpHeaders` FlatBuffer of the request or response headers.
    fn headers(&mut self, ctx: &dyn HttpContext, response: bool, out: &mut Vec<u8>);
    /// Appends an unsigned ASCII decimal.
    fn decimal_u64(&mut self, v: u64, out: &mut Vec<u8>);
    /// Appends a signed ASCII decimal.
    fn decimal_i64(&mut self, v: i64, out: &mut Vec<u8>);
    /// Appends the params JSON (`{...}` or `null`).
    fn params(&mut self, params: Option<&[(String, String)]>, out: &mut Vec<u8>);
}

/// Per-session WebSocket state the dispatcher needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsState {
    /// Whether the handshake has happened (a second upgrade is ignored).
    pub upgraded: bool,
    /// Whether the connection has finished (closed by either side).
    pub closed: bool,
}

impl WsState {
    /// Whether the session is in WebSocket mode: upgraded and not yet closed.
    pub fn active(&self) -> bool {
        self.upgraded && !self.closed
    }
}

/// Processes one plugin-to-host message.
///
/// On [`Step::Reply`], `reply` holds the reply payload (cleared first).
///
/// # Errors
///
/// A [`DispatchError`] for the session; the caller ends the phase with it.
pub fn dispatch<E: ReplyEncoding>(
    method_id: u32,
    payload: &[u8],
    ctx: &mut dyn HttpContext,
    ws: &mut WsState,
    enc: &mut E,
    reply: &mut Vec<u8>,
) -> Result<Step, DispatchError> {
    let Some(method) = Method::from_u32(method_id) else {
        if method_id == SDK_ERROR_METHOD {
            return Err(DispatchError::Plugin(
                String::from_utf8_lossy(payload).into_owned(),
            ));
        }
        return Err(DispatchError::UnknownMethod(method_id));
    };
    reply.clear();
    let downstream = |reason: String| DispatchError::Downstream {
        method: method_id,
        reason,
    };
    let text = |p: &[u8]| -> Result<String, DispatchError> {
        String::from_utf8(p.to_vec()).map_err(|_| DispatchError::Malformed {
            method: method_id,
            reason: "not UTF-8".into(),
        })
    };
    if ws.closed
        && matches!(
            method,
            Method::WebsocketSendText
                | Method::WebsocketSendBinary
                | Method::WebsocketClose
                | Method::WebsocketJoinRoom
                | Method::WebsocketLeaveRoom
                | Method::WebsocketBroadcastRoomText
                | Method::WebsocketBroadcastRoomBinary
        )
    {
        // The connection is gone: like a write to a closed socket, dropped.
        // (A plugin that reacts to messages asynchronously may still be
        // answering ones it got before the close.)
        return Ok(Step::Continue);
    }
    match method {
        Method::Next => return Ok(Step::End(PhaseEnd::Next)),
        Method::End => return Ok(Step::End(PhaseEnd::End)),
        Method::GetPayload => reply.extend_from_slice(ctx.payload().unwrap_or(&[])),
        Method::SetResponseHeader => {
            let (k, v) = decode_header_kv(payload).map_err(|e| DispatchError::Malformed {
                method: method_id,
                reason: e.to_string(),
            })?;
            ctx.set_response_header(k, v);
        }
        Method::RemoveResponseHeader => ctx.remove_response_header(&text(payload)?),
        Method::SetResponseStatus => {
            if let Some(s) = scalar::decode_status(payload) {
                ctx.set_response_status(s);
            }
        }
        Method::SetResponseFullBody => ctx.set_response_body(payload),
        Method::SetResponseStreamData => ctx.response_stream_data(payload).map_err(downstream)?,
        Method::SetResponseStreamEnd => {
            ctx.response_stream_end().map_err(downstream)?;
            return Ok(Step::End(PhaseEnd::StreamEnd));
        }
        Method::SetResponseStreamHeader => ctx.response_stream_header().map_err(downstream)?,
        Method::ReadResponseFullBody => reply.extend_from_slice(ctx.response_body()),
        Method::ReadResponseStatus => enc.decimal_u64(u64::from(ctx.response_status()), reply),
        Method::ReadResponseBytes => enc.decimal_i64(
            i64::try_from(ctx.response_bytes()).unwrap_or(i64::MAX),
            reply,
        ),
        Method::ReadResponseHeaders => enc.headers(ctx, true, reply),
        Method::ReadResponseDuration => enc.decimal_u64(ctx.response_duration_ms(), reply),
        Method::ReadResponseError => reply.extend_from_slice(ctx.response_error().as_bytes()),
        Method::ReadRequestFullBody => reply.extend_from_slice(ctx.request_body()),
        Method::ReadRequestHeader => {
            if !payload.is_empty() {
                reply.extend_from_slice(ctx.request_header(payload).unwrap_or(&[]));
            }
        }
        Method::ReadRequestHeaders => enc.headers(ctx, false, reply),
        Method::ReadRequestUrl => ctx.request_url(reply),
        Method::ReadRequestPath => reply.extend_from_slice(ctx.request_path().as_bytes()),
        Method::ReadRequestQuery => reply.extend_from_slice(ctx.request_query().as_bytes()),
        Method::ReadRequestParams => enc.params(ctx.request_params(), reply),
        Method::ReadRequestHost => reply.extend_from_slice(ctx.request_host().as_bytes()),
        Method::ReadRequestClientIp => reply.extend_from_slice(ctx.client_ip().as_bytes()),
        Method::ReadRequestMethod => reply.extend_from_slice(ctx.request_method().as_bytes()),
        Method::ReadRequestBytes => enc.decimal_i64(ctx.request_content_length(), reply),
        Method::ReadRequestTimestamp => enc.decimal_u64(ctx.request_timestamp_ms(), reply),
        Method::WebsocketUpgrade => {
            if ws.upgraded {
                return Ok(Step::Continue);
            }
            return match ctx.websocket_upgrade() {
                Ok(()) => {
                    ws.upgraded = true;
                    Ok(Step::Upgraded)
                }
                // The host answered the client itself (400); the phase ends as `END`.
                Err(_) => Ok(Step::End(PhaseEnd::End)),
            };
        }
        Method::WebsocketSendText => ctx
            .websocket_send(WsMessage::Text(payload))
            .map_err(downstream)?,
        Method::WebsocketSendBinary => ctx
            .websocket_send(WsMessage::Binary(payload))
            .map_err(downstream)?,
        Method::WebsocketClose => {
            ws.closed = true;
            ctx.websocket_close();
            return Ok(Step::End(PhaseEnd::StreamEnd));
        }
        Method::WebsocketJoinRoom => {
            if !payload.is_empty() {
                ctx.websocket_join_room(&text(payload)?);
            }
        }
        Method::WebsocketLeaveRoom => {
            if !payload.is_empty() {
                ctx.websocket_leave_room(&text(payload)?);
            }
        }
        Method::WebsocketBroadcastRoomText | Method::WebsocketBroadcastRoomBinary => {
            if let Some((room, msg)) = scalar::split_room(payload) {
                let room = text(room)?;
                let msg = if method == Method::WebsocketBroadcastRoomText {
                    WsMessage::Text(msg)
                } else {
                    WsMessage::Binary(msg)
                };
                ctx.websocket_broadcast(&room, msg);
            }
        }
        Method::WebsocketOnOpen
        | Method::WebsocketOnMessageText
        | Method::WebsocketOnMessageBinary
        | Method::WebsocketOnClose
        | Method::WebsocketOnError => return Err(DispatchError::WrongDirection(method_id)),
    }
    Ok(if method.kind() == MethodKind::Read {
        Step::Reply
    } else {
        Step::Continue
    })
}
