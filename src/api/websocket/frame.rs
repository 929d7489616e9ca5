//! RFC 6455 framing for the server side of an event stream: the frames it writes (text, ping,
//! pong, close; never masked, never fragmented) and a reader of what clients send, which keeps
//! no buffer between reads.
//!
//! Event-stream clients send pongs, pings, a close and perhaps messages nobody reads, so by
//! default the reader keeps only a control frame's payload (at most 125 bytes) and skips
//! messages; a channel that reads messages (an agent's) asks for them ([`Reader::messages`]),
//! and gets each whole, unmasked, once its last fragment is in. Either way it checks
//! the rules a server must enforce (RFC 6455 §5): client frames masked, no reserved bits (no
//! extension is negotiated), control frames final and short, continuations only inside a
//! fragmented message, a message no longer than the limit. A library codec (tungstenite) holds a
//! read buffer and a write buffer per connection for the stream's life, which is most of what an
//! idle WebSocket stream cost beyond an SSE one.

/// Opcodes (RFC 6455 §5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub const NORMAL: u16 = 1000;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const TOO_BIG: u16 = 1009;

/// The longest control frame payload.
const MAX_CONTROL: usize = 125;

/// One frame from the server: final, unmasked, `payload` whole.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut out = Vec::with_capacity(n + 10);
    out.push(0x80 | opcode);
    if n < 126 {
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` and `reason` (cut to fit a control frame).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(CLOSE, &payload)
}

/// What a client sent that the session acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    Pong,
    /// The client closes, with its code if it gave one.
    Close(Option<u16>),
    /// The client broke the protocol: close with this code and end.
    Fail(u16, &'static str),
    /// A whole message (only from a reader that keeps them: [`Reader::messages`]): whether it
    /// was text, and its payload, unmasked.
    Message {
        text: bool,
        data: Vec<u8>,
    },
}

/// Where the reader is within a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Collecting the header (2 to 14 bytes).
    Header,
    /// Reading (control) or skipping (data) the payload.
    Payload,
}

/// Reads client frames from whatever bytes arrive, however they are split.
#[derive(Debug)]
pub struct Reader {
    part: Part,
    header: [u8; 14],
    have: u8,
    opcode: u8,
    mask: [u8; 4],
    /// Payload bytes still to come in this frame, and how many came.
    left: u64,
    seen: u64,
    /// A control frame's payload, unmasked.
    control: Vec<u8>,
    /// Inside a fragmented message, and its length so far.
    in_message: bool,
    message_len: u64,
    max_message: u64,
    /// A protocol error broke the framing: whatever follows is dropped unread.
    broken: bool,
    /// Messages are kept ([`Reader::messages`]), and the one being read: text or binary, and its
    /// payload so far.
    keep: bool,
    message_text: bool,
    message: Vec<u8>,
    /// The rest of a frame past the limit is being skipped.
    skipping: bool,
}

impl Reader {
    /// A reader refusing messages longer than `max_message` bytes (1009).
    pub fn new(max_message: usize) -> Reader {
        Reader {
            part: Part::Header,
            header: [0; 14],
            have: 0,
            opcode: 0,
            mask: [0; 4],
            left: 0,
            seen: 0,
            control: Vec::new(),
            in_message: false,
            message_len: 0,
            max_message: max_message as u64,
            broken: false,
            keep: false,
            message_text: false,
            message: Vec::new(),
            skipping: false,
        }
    }

    /// A reader that gives each message whole ([`Incoming::Message`]), up to `max_message`
    /// bytes (a longer one fails with 1009 and is skipped, as by [`Reader::new`]).
    pub fn messages(max_message: usize) -> Reader {
        Reader {
            keep: true,
            ..Reader::new(max_message)
        }
    }

    /// Takes bytes from the front of `buf`; returns how many it took and what they completed,
    /// if anything (call again with the rest).
    ///
    /// After a failure the reader goes on taking bytes, so the client can finish sending and read
    /// the close: past a message too big it skips that frame and reads on (the client's close
    /// comes through), past a broken frame it drops everything.
    pub fn read(&mut self, buf: &[u8]) -> (usize, Option<Incoming>) {
        if self.broken {
            return (buf.len(), None);
        }
        let mut used = 0;
        loop {
            match self.part {
                Part::Header => {
                    let want = self.header_len();
                    if usize::from(self.have) < want {
                        if used == buf.len() {
                            return (used, None);
                        }
                        let n = (want - usize::from(self.have)).min(buf.len() - used);
                        let at = usize::from(self.have);
                        self.header[at..at + n].copy_from_slice(&buf[used..used + n]);
                        self.have += n as u8;
                        used += n;
                        // the length byte may ask for more header: looked at again
                        continue;
                    }
                    if let Err(fail) = self.start_frame() {
                        if !matches!(fail, Incoming::Fail(TOO_BIG, _)) {
                            self.broken = true;
                        }
                        return (used, Some(fail));
                    }
                    if self.left == 0 {
                        if let Some(done) = self.end_frame() {
                            return (used, Some(done));
                        }
                        continue;
                    }
                }
                Part::Payload => {
                    if used == buf.len() {
                        return (used, None);
                    }
                    let n =
                        (buf.len() - used).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    let into = if self.opcode >= CLOSE {
                        Some(&mut self.control)
                    } else if self.keep && !self.skipping {
                        Some(&mut self.message)
                    } else {
                        None
                    };
                    if let Some(into) = into {
                        for (i, b) in buf[used..used + n].iter().enumerate() {
                            let k = (self.seen as usize + i) % 4;
                            into.push(b ^ self.mask[k]);
                        }
                    }
                    self.seen += n as u64;
                    self.left -= n as u64;
                    used += n;
                    if self.left == 0
                        && let Some(done) = self.end_frame()
                    {
                        return (used, Some(done));
                    }
                }
            }
        }
    }

    /// How long the header is, as far as its bytes so far tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // a client's frames are masked; an unmasked one fails when the header is read
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// The header is complete: checks it and sets up the payload.
    fn start_frame(&mut self) -> Result<(), Incoming> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(Incoming::Fail(PROTOCOL_ERROR, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(Incoming::Fail(PROTOCOL_ERROR, "an unmasked client frame"));
        }
        self.opcode = b0 & 0x0F;
        let (len, at) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask.copy_from_slice(&self.header[at..at + 4]);
        match self.opcode {
            CLOSE | PING | PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(Incoming::Fail(
                        PROTOCOL_ERROR,
                        "a control frame fragmented or longer than 125 bytes",
                    ));
                }
            }
            TEXT | BINARY | CONTINUATION => {
                if (self.opcode == CONTINUATION) != self.in_message {
                    return Err(Incoming::Fail(
                        PROTOCOL_ERROR,
                        "a continuation outside a fragmented message, or a new message inside one",
                    ));
                }
                self.message_len = if self.opcode == CONTINUATION {
                    self.message_len.saturating_add(len)
                } else {
                    len
                };
                if self.message_len > self.max_message {
                    // the rest of this frame is skipped; the message is over
                    self.in_message = false;
                    self.left = len;
                    self.seen = 0;
                    self.opcode = BINARY;
                    self.part = Part::Payload;
                    self.skipping = true;
                    self.message = Vec::new();
                    return Err(Incoming::Fail(TOO_BIG, "message too big"));
                }
                if self.opcode != CONTINUATION {
                    self.message_text = self.opcode == TEXT;
                    self.message.clear();
                }
                self.in_message = !fin;
            }
            _ => return Err(Incoming::Fail(PROTOCOL_ERROR, "an unknown opcode")),
        }
        self.left = len;
        self.seen = 0;
        self.control.clear();
        self.part = Part::Payload;
        Ok(())
    }

    /// The frame's payload is all here: what it means, if anything.
    fn end_frame(&mut self) -> Option<Incoming> {
        self.part = Part::Header;
        self.have = 0;
        let control = std::mem::take(&mut self.control);
        match self.opcode {
            PING => Some(Incoming::Ping(control)),
            PONG => Some(Incoming::Pong),
            CLOSE => match control.len() {
                0 => Some(Incoming::Close(None)),
                1 => Some(Incoming::Fail(PROTOCOL_ERROR, "a close frame of one byte")),
                _ => Some(Incoming::Close(Some(u16::from_be_bytes([
                    control[0], control[1],
                ])))),
            },
            _ if std::mem::take(&mut self.skipping) => None,
            // a message's last fragment: whole, when messages are kept
            _ if self.keep && !self.in_message => Some(Incoming::Message {
                text: self.message_text,
                data: std::mem::take(&mut self.message),
            }),
            // a message's content means nothing here
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`, `fin` as given.
    fn client(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.push(if fin { 0x80 } else { 0 } | opcode);
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xFFFF {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Everything `bytes` completes, fed in pieces of `step` bytes, up to a failure.
    fn all(r: &mut Reader, bytes: &[u8], step: usize) -> Vec<Incoming> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            let mut at = 0;
            loop {
                let (n, got) = r.read(&chunk[at..]);
                at += n;
                match got {
                    Some(g @ Incoming::Fail(..)) => {
                        out.push(g);
                        return out;
                    }
                    Some(g) => out.push(g),
                    None => break,
                }
            }
            assert_eq!(at, chunk.len(), "every byte taken");
        }
        out
    }

    #[test]
    fn server_frames_are_final_unmasked_with_the_shortest_length() {
        assert_eq!(encode(TEXT, b"hi"), [0x81, 2, b'h', b'i']);
        let f = encode(TEXT, &[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = encode(BINARY, &vec![0; 70_000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(encode(PING, &[]), [0x89, 0]);
        let c = close(1008, "key_revoked");
        assert_eq!(&c[..4], &[0x88, 13, 0x03, 0xF0]);
        assert_eq!(&c[4..], b"key_revoked");
        // a long reason is cut on a character boundary to fit 125 bytes
        let c = close(1011, &"é".repeat(100));
        assert!(c.len() - 2 <= 125);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    #[test]
    fn control_frames_are_read_however_the_bytes_are_split() {
        let mut bytes = client(PING, true, b"abc", [1, 2, 3, 4]);
        bytes.extend(client(PONG, true, b"", [9, 9, 9, 9]));
        bytes.extend(client(TEXT, true, &[b'z'; 1000], [5, 6, 7, 8]));
        bytes.extend(client(
            CLOSE,
            true,
            &[0x03, 0xE8, b'b', b'y', b'e'],
            [7, 7, 7, 7],
        ));
        let want = vec![
            Incoming::Ping(b"abc".to_vec()),
            Incoming::Pong,
            Incoming::Close(Some(1000)),
        ];
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            let mut r = Reader::new(64 * 1024);
            assert_eq!(all(&mut r, &bytes, step), want, "in pieces of {step}");
        }
    }

    #[test]
    fn fragmented_messages_are_skipped_and_held_to_the_limit() {
        let mut r = Reader::new(100);
        let mut bytes = client(TEXT, false, &[b'a'; 60], [1, 1, 1, 1]);
        // a ping between the fragments is answered
        bytes.extend(client(PING, true, b"", [2, 2, 2, 2]));
        bytes.extend(client(CONTINUATION, true, &[b'b'; 40], [3, 3, 3, 3]));
        assert_eq!(all(&mut r, &bytes, 5), vec![Incoming::Ping(vec![])]);
        // 60 + 41 > 100
        let mut r = Reader::new(100);
        let mut bytes = client(TEXT, false, &[b'a'; 60], [1, 1, 1, 1]);
        bytes.extend(client(CONTINUATION, true, &[b'b'; 41], [3, 3, 3, 3]));
        assert_eq!(
            all(&mut r, &bytes, 1000).last(),
            Some(&Incoming::Fail(TOO_BIG, "message too big"))
        );
        // the rest of the big frame is skipped and the client's close still read
        let mut r = Reader::new(100);
        let mut bytes = client(TEXT, true, &[b'a'; 500], [1, 2, 3, 4]);
        bytes.extend(client(CLOSE, true, &[0x03, 0xE8], [4, 3, 2, 1]));
        let (n, got) = r.read(&bytes);
        assert_eq!(got, Some(Incoming::Fail(TOO_BIG, "message too big")));
        assert_eq!(
            all(&mut r, &bytes[n..], 64),
            vec![Incoming::Close(Some(1000))]
        );
        // after a broken frame everything is dropped
        let mut r = Reader::new(100);
        assert!(matches!(
            r.read(&[0x89, 0x00]).1,
            Some(Incoming::Fail(PROTOCOL_ERROR, _))
        ));
        assert_eq!(r.read(&client(CLOSE, true, b"", [0; 4])), (6, None));
        // a 64-bit length is checked before any of the payload comes
        let mut r = Reader::new(100);
        let mut big = vec![0x82, 0x80 | 127];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        big.extend_from_slice(&[0; 4]);
        assert_eq!(
            r.read(&big).1,
            Some(Incoming::Fail(TOO_BIG, "message too big"))
        );
    }

    #[test]
    fn a_reader_of_messages_gives_each_whole_and_unmasked() {
        let mut bytes = client(TEXT, false, b"{\"type\":", [1, 2, 3, 4]);
        // a ping between the fragments is answered first
        bytes.extend(client(PING, true, b"p", [9, 8, 7, 6]));
        bytes.extend(client(CONTINUATION, false, b"\"hel", [5, 6, 7, 8]));
        bytes.extend(client(CONTINUATION, true, b"lo\"}", [0, 0, 1, 1]));
        bytes.extend(client(BINARY, true, &[0xFF, 0], [3, 3, 3, 3]));
        bytes.extend(client(TEXT, true, &[b'x'; 300], [1, 2, 3, 4]));
        let want = vec![
            Incoming::Ping(b"p".to_vec()),
            Incoming::Message {
                text: true,
                data: b"{\"type\":\"hello\"}".to_vec(),
            },
            Incoming::Message {
                text: false,
                data: vec![0xFF, 0],
            },
            Incoming::Message {
                text: true,
                data: vec![b'x'; 300],
            },
        ];
        for step in [1, 3, 7, bytes.len()] {
            let mut r = Reader::messages(1000);
            assert_eq!(all(&mut r, &bytes, step), want, "in pieces of {step}");
        }
        // past the limit: refused, skipped, and the next message read whole
        let mut r = Reader::messages(10);
        let mut bytes = client(TEXT, false, b"0123456", [1, 1, 1, 1]);
        bytes.extend(client(CONTINUATION, true, b"789ab", [2, 2, 2, 2]));
        bytes.extend(client(TEXT, true, b"ok", [3, 3, 3, 3]));
        let (mut at, mut got) = (0, Vec::new());
        while at < bytes.len() {
            let (n, g) = r.read(&bytes[at..]);
            at += n;
            got.extend(g);
        }
        assert_eq!(
            got,
            vec![
                Incoming::Fail(TOO_BIG, "message too big"),
                Incoming::Message {
                    text: true,
                    data: b"ok".to_vec()
                }
            ]
        );
        // a reader of events keeps none
        let mut r = Reader::new(1000);
        assert_eq!(all(&mut r, &client(TEXT, true, b"hi", [0; 4]), 1), vec![]);
    }

    #[test]
    fn protocol_errors_fail_the_connection() {
        let fails = |bytes: Vec<u8>| {
            let mut r = Reader::new(1000);
            matches!(r.read(&bytes).1, Some(Incoming::Fail(PROTOCOL_ERROR, _)))
        };
        // unmasked
        assert!(fails(vec![0x89, 0x00]));
        // a reserved bit
        let mut f = client(PING, true, b"", [0; 4]);
        f[0] |= 0x40;
        assert!(fails(f));
        // an unknown opcode
        assert!(fails(client(0x3, true, b"", [0; 4])));
        // a fragmented or long control frame
        assert!(fails(client(PING, false, b"", [0; 4])));
        assert!(fails(client(PING, true, &[0; 126], [0; 4])));
        // a continuation with no message begun, a new message inside one
        assert!(fails(client(CONTINUATION, true, b"x", [0; 4])));
        let mut r = Reader::new(1000);
        let mut bytes = client(TEXT, false, b"x", [0; 4]);
        bytes.extend(client(TEXT, true, b"y", [0; 4]));
        assert!(matches!(
            all(&mut r, &bytes, 1000).last(),
            Some(Incoming::Fail(PROTOCOL_ERROR, _))
        ));
        // a close of one byte
        let mut r = Reader::new(1000);
        assert!(matches!(
            all(&mut r, &client(CLOSE, true, &[3], [0; 4]), 1000).last(),
            Some(Incoming::Fail(PROTOCOL_ERROR, _))
        ));
        // a close without a code
        let mut r = Reader::new(1000);
        assert_eq!(
            all(&mut r, &client(CLOSE, true, b"", [0; 4]), 1000),
            vec![Incoming::Close(None)]
        );
    }
}
