//! Why a channel connection ends, and the WebSocket close (code and
//! reason) each cause sends. Its own file below both the connections
//! ([`super::conn`]) and the streams ([`super::streams`]), which closes a
//! whole stream's connections with one of these, so neither imports the
//! other for it.

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Why a connection ended; decides the close code and reason sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The bridge is shutting down: 1001 going away.
    GoingAway,
    /// What the client still had to read fell out of the replay log's
    /// retention: 1013 (try again later), reason `slow consumer`.
    SlowConsumer,
    /// The replay log segment the client reads could not be read: 1011,
    /// reason `replay log unreadable`.
    ReplayError,
    /// No frame (pong or other) from the client for two ping intervals:
    /// 1008, reason `ping timeout`.
    PingTimeout,
    /// A reload removed the token the client used: 1008, reason `token
    /// revoked`.
    TokenRevoked,
    /// The token the client used passed its `not_after`: 1008, reason
    /// `token expired`.
    TokenExpired,
    /// A reload removed the client's channel or changed its filter: 1012
    /// (service restart: reconnect), reason `channel changed`.
    ChannelChanged,
    /// The client broke the WebSocket protocol (an unmasked frame, reserved
    /// bits, a bad opcode or control frame): 1002.
    ProtocolError,
    /// A text frame (or a close reason) that is not UTF-8: 1007.
    InvalidUtf8,
    /// A frame or message over [`super::conn::MAX_CLIENT_MESSAGE_BYTES`]: 1009.
    TooBig,
    /// The client closed or the socket failed: nothing more to send.
    ClientGone,
}

impl CloseReason {
    pub(super) fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            CloseReason::GoingAway => (CloseCode::Away, "going away: the bridge is shutting down"),
            CloseReason::SlowConsumer => (CloseCode::Again, "slow consumer"),
            CloseReason::ReplayError => (CloseCode::Error, "replay log unreadable"),
            CloseReason::PingTimeout => (CloseCode::Policy, "ping timeout"),
            CloseReason::TokenRevoked => (CloseCode::Policy, "token revoked"),
            CloseReason::TokenExpired => (CloseCode::Policy, "token expired"),
            CloseReason::ChannelChanged => (CloseCode::Restart, "channel changed"),
            CloseReason::ProtocolError => (CloseCode::Protocol, "protocol error"),
            CloseReason::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8 in a text frame"),
            CloseReason::TooBig => (CloseCode::Size, "message too big: at most 65536 bytes"),
            CloseReason::ClientGone => return None,
        };
        Some(CloseFrame { code, reason: reason.into() })
    }

    /// The close for a read error: a protocol violation gets its RFC 6455
    /// code; a broken or reset socket has no one to tell.
    pub(super) fn of_read_error(e: &tungstenite::Error) -> CloseReason {
        use tungstenite::error::ProtocolError as P;
        match e {
            tungstenite::Error::Capacity(_) => CloseReason::TooBig,
            tungstenite::Error::Utf8(_) => CloseReason::InvalidUtf8,
            tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake) => CloseReason::ClientGone,
            tungstenite::Error::Protocol(_) => CloseReason::ProtocolError,
            _ => CloseReason::ClientGone,
        }
    }
}
