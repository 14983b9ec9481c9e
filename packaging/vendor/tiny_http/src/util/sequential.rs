use std::io::Result as IoResult;
use std::io::{BufRead, Read, Write};

use std::sync::{Arc, Condvar, Mutex};

use std::mem;

// sessiond patch: each request used to get two `std::sync::mpsc` channels to pass the connection's
// reader and the turn to write from one request to the next. A std channel allocates its shared
// state and, at the first send, a block of 31 slots (about 2.5 KiB for the reader): a few
// microseconds of allocation per request, and the large block made glibc consolidate its free
// lists on every request. Each value here is passed exactly once, so a one-shot handoff (one small
// allocation) does the same job.

/// The receiving end of a one-shot handoff.
struct Receiver<T>(Arc<Handoff<T>>);

/// The sending end: sends at most once; dropped unsent, the receiver gets an error.
struct Sender<T>(Arc<Handoff<T>>);

struct Handoff<T> {
    state: Mutex<Slot<T>>,
    changed: Condvar,
}

struct Slot<T> {
    state: State<T>,
    /// Whether the receiver sleeps on `changed`. `Condvar::notify_one` makes a system call
    /// whether or not anyone waits, and the receiver rarely has to.
    waiting: bool,
}

enum State<T> {
    Waiting,
    Sent(T),
    Taken,
    Dropped,
}

fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Handoff {
        state: Mutex::new(Slot {
            state: State::Waiting,
            waiting: false,
        }),
        changed: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// What `recv` returns when the sender was dropped without sending.
#[derive(Debug)]
struct RecvError;

impl<T> Sender<T> {
    /// Hands the value over; `Err` gives it back when the receiver is gone.
    fn send(&self, value: T) -> Result<(), T> {
        if Arc::strong_count(&self.0) == 1 {
            return Err(value);
        }
        let mut slot = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Waiting = slot.state {
            slot.state = State::Sent(value);
            if slot.waiting {
                self.0.changed.notify_one();
            }
            Ok(())
        } else {
            Err(value)
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut slot = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Waiting = slot.state {
            slot.state = State::Dropped;
            if slot.waiting {
                self.0.changed.notify_one();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value (once).
    fn recv(&mut self) -> Result<T, RecvError> {
        let mut slot = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match mem::replace(&mut slot.state, State::Taken) {
                State::Sent(value) => return Ok(value),
                State::Waiting => {
                    slot.state = State::Waiting;
                    slot.waiting = true;
                    slot = self
                        .0
                        .changed
                        .wait(slot)
                        .unwrap_or_else(|e| e.into_inner());
                    slot.waiting = false;
                }
                State::Taken => return Err(RecvError),
                State::Dropped => {
                    slot.state = State::Dropped;
                    return Err(RecvError);
                }
            }
        }
    }
}

impl<T> Receiver<T> {
    /// sessiond patch: the value if it was sent, `None` while it is not; never waits.
    fn try_recv(&mut self) -> Option<Result<T, RecvError>> {
        let mut slot = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        match mem::replace(&mut slot.state, State::Taken) {
            State::Sent(value) => Some(Ok(value)),
            State::Waiting => {
                slot.state = State::Waiting;
                None
            }
            State::Taken => Some(Err(RecvError)),
            State::Dropped => {
                slot.state = State::Dropped;
                Some(Err(RecvError))
            }
        }
    }
}

/// sessiond patch: a writer that can take bytes without waiting (see `SequentialWriter::write_now`).
pub trait WriteNow: Write + Send {
    /// Writes what can be written at once, or fails with `WouldBlock` when nothing can.
    fn write_now(&mut self, buf: &[u8]) -> IoResult<usize>;
}

impl WriteNow for std::io::BufWriter<crate::util::RefinedTcpStream> {
    fn write_now(&mut self, buf: &[u8]) -> IoResult<usize> {
        // Bytes still buffered would have to go first, and sending them may wait.
        if !self.buffer().is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.get_ref().write_now(buf)
    }
}

pub struct SequentialReaderBuilder<R>
where
    R: Read + Send,
{
    inner: SequentialReaderBuilderInner<R>,
}

enum SequentialReaderBuilderInner<R>
where
    R: Read + Send,
{
    First(R),
    NotFirst(Receiver<R>),
}

pub struct SequentialReader<R>
where
    R: Read + Send,
{
    inner: SequentialReaderInner<R>,
    next: Sender<R>,
}

enum SequentialReaderInner<R>
where
    R: Read + Send,
{
    MyTurn(R),
    Waiting(Receiver<R>),
    Empty,
}

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    next_trigger: Option<Receiver<()>>,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    trigger: Option<Receiver<()>>,
    writer: Arc<Mutex<W>>,
    on_finish: Sender<()>,
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    pub fn new(reader: R) -> SequentialReaderBuilder<R> {
        SequentialReaderBuilder {
            inner: SequentialReaderBuilderInner::First(reader),
        }
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            next_trigger: None,
        }
    }
}

impl<R: Read + Send> Iterator for SequentialReaderBuilder<R> {
    type Item = SequentialReader<R>;

    fn next(&mut self) -> Option<SequentialReader<R>> {
        let (tx, rx) = channel();

        let inner = mem::replace(&mut self.inner, SequentialReaderBuilderInner::NotFirst(rx));

        match inner {
            SequentialReaderBuilderInner::First(reader) => Some(SequentialReader {
                inner: SequentialReaderInner::MyTurn(reader),
                next: tx,
            }),

            SequentialReaderBuilderInner::NotFirst(previous) => Some(SequentialReader {
                inner: SequentialReaderInner::Waiting(previous),
                next: tx,
            }),
        }
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        let (tx, rx) = channel();
        let mut next_next_trigger = Some(rx);
        ::std::mem::swap(&mut next_next_trigger, &mut self.next_trigger);

        Some(SequentialWriter {
            trigger: next_next_trigger,
            writer: self.writer.clone(),
            on_finish: tx,
        })
    }
}

impl<R: Read + Send> SequentialReader<R> {
    // sessiond patch: the reader, once it is this one's turn (waited for on first use); shared by
    // `Read` and `BufRead`.
    fn turn(&mut self) -> &mut R {
        if let SequentialReaderInner::Waiting(ref mut recv) = self.inner {
            self.inner = SequentialReaderInner::MyTurn(recv.recv().unwrap());
        }
        match self.inner {
            SequentialReaderInner::MyTurn(ref mut reader) => reader,
            _ => unreachable!(),
        }
    }
}

impl<R: Read + Send> Read for SequentialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.turn().read(buf)
    }
}

// sessiond patch: a reader whose turn it is lends out its buffer, so a request's head is read a
// line at a time rather than a byte at a time (see `ClientConnection::read_next_line`).
impl<R: BufRead + Send> BufRead for SequentialReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        self.turn().fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let SequentialReaderInner::MyTurn(ref mut reader) = self.inner {
            reader.consume(amt)
        }
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        if let Some(v) = self.trigger.as_mut() {
            v.recv().unwrap()
        }
        self.trigger = None;

        self.writer.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        if let Some(v) = self.trigger.as_mut() {
            v.recv().unwrap()
        }
        self.trigger = None;

        self.writer.lock().unwrap().flush()
    }
}

impl<W: WriteNow> SequentialWriter<W> {
    /// sessiond patch: writes what the connection takes at once, without waiting for the turn
    /// of an earlier response on the same connection nor for room in the socket: `WouldBlock`
    /// when nothing could be written. A response written this way in part is finished through
    /// `Write`, which waits.
    pub fn write_now(&mut self, buf: &[u8]) -> IoResult<usize> {
        if let Some(v) = self.trigger.as_mut() {
            match v.try_recv() {
                None => return Err(std::io::ErrorKind::WouldBlock.into()),
                Some(turn) => turn.unwrap(),
            }
        }
        self.trigger = None;
        self.writer.lock().unwrap().write_now(buf)
    }
}

impl<R> Drop for SequentialReader<R>
where
    R: Read + Send,
{
    fn drop(&mut self) {
        let inner = mem::replace(&mut self.inner, SequentialReaderInner::Empty);

        match inner {
            SequentialReaderInner::MyTurn(reader) => {
                self.next.send(reader).ok();
            }
            SequentialReaderInner::Waiting(mut recv) => {
                let reader = recv.recv().unwrap();
                self.next.send(reader).ok();
            }
            SequentialReaderInner::Empty => (),
        }
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        self.on_finish.send(()).ok();
    }
}
