//! sessfs-latency-proxy: a loopback TCP proxy that adds a fixed delay to every chunk, each way.
//!
//! Why it exists: on one machine every store answers over loopback in a few microseconds, so a
//! benchmark there rewards designs that talk to the store on every request. Real servers reach
//! Redis or memcached over a network where a round trip costs a few hundred microseconds.
//! `scripts/bench --latency-us N` puts this proxy in front of Redis and memcached so that
//! every store (sessfs, phpredis, php-memcached, JuiceFS) pays the same network cost, and the
//! round trips each design makes per request show in its latency.
//!
//! How: each connection has one queue per direction of `(deadline, bytes)`. A reader task
//! reads a chunk, stamps it with `now + delay` and queues it at once; a writer task waits for
//! the deadline of the oldest chunk and writes it (with every later chunk already due). The
//! delay therefore adds latency without serializing throughput, and the order of bytes is kept
//! (the delay is the same for every chunk, so deadlines never go backwards). Deadlines are
//! waited for with a `timerfd`, because tokio's timer rounds up to whole milliseconds. One
//! thread (a current-thread runtime): a hop between worker threads cost more here than the
//! forwarding itself. `--delay-us 0` takes the same path without the wait, so comparing it
//! with a direct connection measures what the proxy itself adds.
//!
//! A new connection costs a round trip on a real network before the client can send anything
//! (the TCP handshake), but on loopback `connect()` returns at once. So the bytes a client
//! sends on a new connection are not delivered before three one-way delays after the proxy
//! accepted it (SYN, SYN-ACK, then the first data), unless `--no-handshake-delay` is given.
//! Clients that connect for every request (phpredis and php-memcached by default) pay that
//! round trip in a datacenter too; without it they would look faster here than there.
//!
//! It refuses to listen on, or connect to, anything but a loopback address: it is a test tool
//! for this machine and must never become a relay.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks queued per direction before the reader waits for the writer (back-pressure).
const QUEUE_CHUNKS: usize = 4096;
/// Bytes read at once.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "sessfs-latency-proxy",
    version,
    about = "Loopback TCP proxy that delays every chunk by a fixed time in each direction"
)]
struct Args {
    /// Address to listen on (loopback only), e.g. 127.0.0.1:17000; port 0 picks a free port.
    #[arg(long)]
    listen: String,
    /// Address to forward to (loopback only), e.g. 127.0.0.1:6379.
    #[arg(long)]
    upstream: String,
    /// Delay added to each chunk in each direction, in microseconds (a round trip gains twice).
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Do not charge a new connection the handshake's round trip (see above).
    #[arg(long)]
    no_handshake_delay: bool,
}

/// Resolves `addr` and insists that every address it names is a loopback one.
async fn loopback(what: &str, addr: &str) -> Result<SocketAddr, String> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("--{what} {addr}: {e}"))?
        .collect();
    let Some(first) = found.first().copied() else {
        return Err(format!("--{what} {addr}: resolves to no address"));
    };
    if let Some(bad) = found.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "--{what} {addr}: {} is not a loopback address; this proxy only serves \
             127.0.0.0/8 and ::1",
            bad.ip()
        ));
    }
    Ok(first)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessfs-latency-proxy: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let listen = loopback("listen", &args.listen).await?;
    let upstream = loopback("upstream", &args.upstream).await?;
    let delay = Duration::from_micros(args.delay_us);
    let handshake = if args.no_handshake_delay {
        Duration::ZERO
    } else {
        delay * 3
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // The one line a script waits for before it starts using the proxy.
    println!(
        "listening on {bound}, forwarding to {upstream}, delay {} us each way, \
         a new connection's first bytes after {} us",
        args.delay_us,
        handshake.as_micros()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let first = Instant::now() + handshake;
                    tokio::spawn(async move {
                        match serve(client, upstream, delay, first).await {
                            Ok(()) => {}
                            // A peer that closes first is how connections normally end.
                            Err(e) if is_hang_up(&e) => {}
                            Err(e) => eprintln!("sessfs-latency-proxy: connection from {peer}: {e}"),
                        }
                    });
                }
                // Out of descriptors and the like: say so, wait a little, keep serving.
                Err(e) => {
                    eprintln!("sessfs-latency-proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Joins one client to a new upstream connection until either side closes. Nothing the client
/// sends is delivered before `first` (the end of the emulated handshake).
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    first: Instant,
) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = tokio::spawn(pipe(client_r, server_w, delay, first));
    let down = tokio::spawn(pipe(server_r, client_w, delay, Instant::now()));
    let (up, down) = tokio::join!(up, down);
    up.map_err(io::Error::other)??;
    down.map_err(io::Error::other)??;
    Ok(())
}

/// One direction: a reader that stamps and queues chunks, a writer that sends them when due.
/// No chunk is due before `not_before`; deadlines still never go backwards.
async fn pipe(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let writer = tokio::spawn(deliver(rx, to, delay));
    let mut read_result = Ok(());
    loop {
        let mut buf = vec![0u8; CHUNK];
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                let due = (Instant::now() + delay).max(not_before);
                if tx.send((due, buf)).await.is_err() {
                    // The writer is gone (its peer closed): nothing more can be delivered.
                    break;
                }
            }
            Err(e) => {
                read_result = Err(e);
                break;
            }
        }
    }
    // Closing the queue lets the writer send what is left, then shut its side down.
    drop(tx);
    let write_result = writer.await.map_err(io::Error::other)?;
    read_result.and(write_result)
}

async fn deliver(
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: OwnedWriteHalf,
    delay: Duration,
) -> io::Result<()> {
    // A zero delay never sets a deadline in the future (the handshake is three delays).
    let timer = if delay.is_zero() {
        None
    } else {
        Some(Timer::new()?)
    };
    let mut due: VecDeque<u8> = VecDeque::new();
    while let Some((deadline, bytes)) = rx.recv().await {
        if let Some(timer) = &timer {
            timer.sleep_until(deadline).await?;
        }
        due.extend(bytes);
        // Everything else already queued and due goes out in the same write.
        while let Ok((next_deadline, more)) = rx.try_recv() {
            if next_deadline > Instant::now() {
                // Not due yet: write what is due, then wait for this one.
                flush(&mut to, &mut due).await?;
                if let Some(timer) = &timer {
                    timer.sleep_until(next_deadline).await?;
                }
            }
            due.extend(more);
        }
        flush(&mut to, &mut due).await?;
    }
    to.shutdown().await
}

async fn flush(to: &mut OwnedWriteHalf, due: &mut VecDeque<u8>) -> io::Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let (a, b) = due.as_slices();
    to.write_all(a).await?;
    to.write_all(b).await?;
    due.clear();
    Ok(())
}

/// A monotonic `timerfd` waited on through tokio: microsecond deadlines without a busy loop.
struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a negative result is reported below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a descriptor just created here and owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the descriptor is owned by the OwnedFd handed over, which keeps it open and
        // unchanged for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(Timer { fd })
    }

    async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                // Saturates far beyond any delay this proxy is given.
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                // Below one billion: fits a c_long on every target.
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: spec is a valid itimerspec; a null old value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 owned by this frame.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
    }
}
