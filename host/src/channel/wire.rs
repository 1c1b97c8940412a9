//! Each message type's encoding: a tag byte, then its payload.

use super::*;

/// A message type's encoding: one tag byte, then its payload.
pub trait Wire: Sized {
    fn encode(&self, buf: &mut Vec<u8>);
    /// `None` for a frame that is not a message of this type.
    fn decode(tag: u8, payload: &[u8]) -> Option<Self>;
}

pub(super) fn push_text(buf: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buf.extend_from_slice(&text.as_bytes()[..end]);
}

/// The most bytes of state a worker hands over (plugin-api's `MAX_STATE`).
pub const MAX_STATE: usize = plugin_api::ffi::MAX_STATE;

pub(super) fn push_state(buf: &mut Vec<u8>, state: &[u8]) {
    buf.push(b'T');
    buf.extend(&state[..state.len().min(MAX_STATE)]);
}

pub(super) fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl Wire for ToWorker {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            ToWorker::Stop(StopReason::Reload) => buf.extend([b'S', b'r']),
            ToWorker::Stop(StopReason::Shutdown) => buf.extend([b'S', b's']),
            ToWorker::State(state) => push_state(buf, state),
            ToWorker::Go { generation } => {
                buf.push(b'G');
                buf.extend(generation.to_le_bytes());
            }
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'S', [b'r']) => Some(ToWorker::Stop(StopReason::Reload)),
            (b'S', [b's']) => Some(ToWorker::Stop(StopReason::Shutdown)),
            (b'T', state) => Some(ToWorker::State(state.to_vec())),
            (b'G', generation) => Some(ToWorker::Go {
                generation: u64::from_le_bytes(generation.try_into().ok()?),
            }),
            _ => None,
        }
    }
}

impl Wire for FromWorker {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            FromWorker::Loaded { can_hot_reload } => buf.extend([b'L', u8::from(*can_hot_reload)]),
            FromWorker::Serving => buf.push(b'S'),
            FromWorker::StopTaken => buf.push(b'D'),
            FromWorker::Failed(reason) => {
                buf.push(b'F');
                push_text(buf, reason);
            }
            FromWorker::State(state) => push_state(buf, state),
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'L', [flag @ (0 | 1)]) => Some(FromWorker::Loaded {
                can_hot_reload: *flag == 1,
            }),
            (b'S', []) => Some(FromWorker::Serving),
            (b'D', []) => Some(FromWorker::StopTaken),
            (b'F', reason) => Some(FromWorker::Failed(text(reason))),
            (b'T', state) => Some(FromWorker::State(state.to_vec())),
            _ => None,
        }
    }
}

impl Wire for NewToOld {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            NewToOld::ReadyToTakeOver => buf.push(b'R'),
            NewToOld::TookOver => buf.push(b'T'),
            NewToOld::Failed(reason) => {
                buf.push(b'F');
                push_text(buf, reason);
            }
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'R', []) => Some(NewToOld::ReadyToTakeOver),
            (b'T', []) => Some(NewToOld::TookOver),
            (b'F', reason) => Some(NewToOld::Failed(text(reason))),
            _ => None,
        }
    }
}

impl Wire for OldToNew {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            OldToNew::Start { generation } => {
                buf.push(b'G');
                buf.extend(generation.to_le_bytes());
            }
            OldToNew::Released => buf.push(b'H'),
            OldToNew::State { slot, state } => {
                buf.push(b'T');
                buf.extend(slot.to_le_bytes());
                buf.extend(&state[..state.len().min(MAX_STATE)]);
            }
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'G', generation) => Some(OldToNew::Start {
                generation: u64::from_le_bytes(generation.try_into().ok()?),
            }),
            (b'H', []) => Some(OldToNew::Released),
            (b'T', [a, b, c, d, state @ ..]) => Some(OldToNew::State {
                slot: u32::from_le_bytes([*a, *b, *c, *d]),
                state: state.to_vec(),
            }),
            _ => None,
        }
    }
}

impl Wire for ToAnchor {
    fn encode(&self, buf: &mut Vec<u8>) {
        let (tag, text) = match self {
            ToAnchor::Serving { pid, generation } => (b'S', format!("{pid} {generation}")),
            ToAnchor::Reloading {
                successor,
                generation,
            } => (b'R', format!("{successor} {generation}")),
            ToAnchor::ReloadFailed(reason) => (b'E', reason.clone()),
            ToAnchor::Stopping { pid } => (b'X', pid.to_string()),
            ToAnchor::Failed(reason) => (b'F', reason.clone()),
        };
        buf.push(tag);
        push_text(buf, &text);
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok();
        let pair = || {
            let (a, b) = text?.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        match tag {
            b'S' => pair().map(|(pid, generation)| ToAnchor::Serving { pid, generation }),
            b'R' => pair().map(|(successor, generation)| ToAnchor::Reloading {
                successor,
                generation,
            }),
            b'E' => Some(ToAnchor::ReloadFailed(
                String::from_utf8_lossy(payload).into(),
            )),
            b'X' => Some(ToAnchor::Stopping {
                pid: text?.parse().ok()?,
            }),
            b'F' => Some(ToAnchor::Failed(String::from_utf8_lossy(payload).into())),
            _ => None,
        }
    }
}

impl Wire for Nothing {
    fn encode(&self, _: &mut Vec<u8>) {
        match *self {}
    }

    fn decode(_: u8, _: &[u8]) -> Option<Self> {
        None
    }
}
