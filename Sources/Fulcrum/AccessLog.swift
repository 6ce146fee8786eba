import EventLoop
import FulcrumCore
import Glibc
import Logging
import Synchronization

/// The process's access log: one line per client connection when it ends, written by a thread of its own so
/// that no worker ever waits on a disk.
///
/// ```
///   worker i: AccessLogBuffer ── full chunk (or 100 ms after its first line) ──▶ mailbox ──▶ writer thread
///                 ▲                                                                           │ write()
///                 └──────────────── emptied chunks, reused (no allocation in steady state) ◀──┘
///   main thread: start, reload (`configure`), SIGUSR1 (`reopen`): opens the file, hands the descriptor over
/// ```
///
/// Bounded: at most `maxQueued` chunks wait for the writer; a worker whose chunk finds the queue full drops
/// its lines. A write that fails (a full disk, an I/O error) drops the lines it could not write. Both are
/// counted in `droppedLines` and warned about at most once per 10 s; neither ever holds up a connection.
final class AccessLog: @unchecked Sendable {
    /// A worker hands its chunk over once it holds this many bytes (a line is about 300 bytes).
    static let chunkBytes = 60 << 10
    static let chunkCapacity = 64 << 10
    /// Chunks waiting for the writer, across all workers: 64 × 64 KiB = 4 MiB at most.
    static let maxQueued = 64
    static let flushMicroseconds: Int64 = 100_000
    static let warningIntervalMicroseconds: Int64 = 10_000_000

    enum Message: Sendable {
        case lines([UInt8], count: Int)
        /// Write to this descriptor from now on (nil: discard); close the previous one unless it is stdout.
        case use(fd: Int32?)
        case stop
    }

    private let enabled = Atomic<Bool>(false)
    private let json = Atomic<Bool>(false)
    private let queued = Atomic<Int>(0)
    private let dropped = Atomic<UInt64>(0)
    private let lastWarning = Atomic<Int64>(.min / 2)
    private let spares = Mutex<[[UInt8]]>([])
    private let pipe: WakeupPipe
    private let mailbox: Mailbox<Message>
    private let logger: Logger
    private var thread: LoopThread?
    /// Set by the writer thread as it ends.
    private final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }
    private let writerEnded = Flag()
    /// How long `stop` waits for the writer (a write to a stalled pipe or a hung file system may never
    /// return) before the process goes on exiting without it.
    static let stopWaitMicroseconds: Int64 = 2_000_000
    /// Main thread only: what runs now.
    private(set) var config: AccessLogConfig?

    /// Lines dropped so far (queue full, or the write failed), for metrics.
    var droppedLines: UInt64 { dropped.load(ordering: .relaxed) }

    /// Whether connections accepted now are logged.
    @inline(__always)
    var isOn: Bool { enabled.load(ordering: .relaxed) }

    var format: AccessLogConfig.Format { json.load(ordering: .relaxed) ? .json : .logfmt }

    /// Opens the destination (a file that cannot be opened fails the start, like a listener that cannot be
    /// bound) and starts the writer thread.
    init(_ config: AccessLogConfig?, logger: Logger, blockedSignals: [Int32]) throws(SystemError) {
        self.logger = logger
        let pipe = try WakeupPipe()
        self.pipe = pipe
        let sender = pipe.sender
        mailbox = Mailbox { sender.send(0x6D) }
        let fd = try config.map { config throws(SystemError) in try Self.open(config.destination) }
        self.config = config
        json.store(config?.format == .json, ordering: .relaxed)
        let writer = AccessLogWriter(log: self, fd: fd)
        let mailbox = self.mailbox
        let ended = writerEnded
        thread = LoopThread.spawn(name: "fulcrum-log", blockedSignals: blockedSignals) {
            writer.run(pipe: pipe, mailbox: mailbox)
            ended.value.store(true, ordering: .releasing)
        }
        enabled.store(config != nil, ordering: .relaxed)
    }

    /// Applies a reloaded `access_log` (main thread). A new file that cannot be opened leaves the running
    /// destination in place, with an error logged.
    func configure(_ loaded: AccessLogConfig?) {
        guard loaded != config else { return }
        if loaded?.destination != config?.destination {
            do throws(SystemError) {
                let fd = try loaded.map { config throws(SystemError) in try Self.open(config.destination) }
                mailbox.post(.use(fd: fd))
            } catch {
                logger.error("access log: cannot open the new path, logging on where it did: \(error)", metadata: [
                    "path": "\(loaded?.destination.description ?? "off")",
                ])
                return
            }
        }
        config = loaded
        json.store(loaded?.format == .json, ordering: .relaxed)
        enabled.store(loaded != nil, ordering: .relaxed)
    }

    /// SIGUSR1 (main thread): reopens the file by its path, so that a rotated file is let go of. If the path
    /// cannot be opened, lines keep going to the file open before.
    func reopen() {
        guard case .file(let path)? = config?.destination else {
            logger.info("SIGUSR1 received: no access log file to reopen")
            return
        }
        do throws(SystemError) {
            let fd = try Self.open(.file(path))
            mailbox.post(.use(fd: fd))
            logger.info("SIGUSR1 received: access log reopened", metadata: ["path": "\(path)"])
        } catch {
            logger.error("SIGUSR1 received: cannot reopen the access log, writing on to the file open before: \(error)", metadata: [
                "path": "\(path)",
            ])
        }
    }

    /// Writes what is queued, closes the file and ends the writer thread, waiting for it at most
    /// `stopWaitMicroseconds`: a writer stuck in `write` does not keep the process from exiting. Call it
    /// once the workers have ended. The wakeup pipe closes only with a writer that ended (a worker that was
    /// not joined may still post to it).
    func stop() {
        mailbox.post(.stop)
        var waited: Int64 = 0
        while !writerEnded.value.load(ordering: .acquiring) && waited < Self.stopWaitMicroseconds {
            usleep(10_000)
            waited += 10_000
        }
        guard writerEnded.value.load(ordering: .acquiring) else {
            logger.warning("access log: the writer is stuck in a write (a stalled pipe or file system); exiting without it", metadata: [
                "dropped_lines": "\(droppedLines)",
            ])
            return
        }
        thread?.join()
        thread = nil
        pipe.close()
        if droppedLines > 0 {
            logger.warning("access log: lines were dropped", metadata: ["dropped_lines": "\(droppedLines)"])
        }
    }

    // MARK: - Workers

    /// Takes a worker's chunk of `lines` lines and hands back an empty one in its place, or drops the lines
    /// when the writer is `maxQueued` chunks behind. Never waits for the writer.
    func submit(_ chunk: inout [UInt8], lines: Int) {
        guard lines > 0 else { return }
        guard queued.load(ordering: .relaxed) < Self.maxQueued else {
            chunk.removeAll(keepingCapacity: true)
            drop(lines, because: "the writer is behind (\(Self.maxQueued) chunks queued)")
            return
        }
        queued.add(1, ordering: .relaxed)
        var empty = spares.withLock { $0.popLast() } ?? []
        if empty.capacity < Self.chunkCapacity { empty.reserveCapacity(Self.chunkCapacity) }
        swap(&empty, &chunk)
        mailbox.post(.lines(empty, count: lines))
    }

    // MARK: - Writer

    /// A written chunk, emptied, for a worker to reuse.
    fileprivate func written(_ chunk: inout [UInt8]) {
        queued.subtract(1, ordering: .relaxed)
        chunk.removeAll(keepingCapacity: true)
        let spare = chunk
        chunk = []
        spares.withLock { spares in
            if spares.count < Self.maxQueued { spares.append(spare) }
        }
    }

    /// Counts dropped lines and warns, at most once per 10 s (from any thread).
    func drop(_ lines: Int, because reason: @autoclosure () -> String) {
        let total = dropped.add(UInt64(lines), ordering: .relaxed).newValue
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        let micros = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec / 1000)
        let last = lastWarning.load(ordering: .relaxed)
        guard micros - last >= Self.warningIntervalMicroseconds,
              lastWarning.compareExchange(expected: last, desired: micros, ordering: .relaxed).exchanged else { return }
        logger.warning("access log: dropping lines (warned at most once per 10 s)", metadata: [
            "reason": "\(reason())", "dropped_lines": "\(total)",
        ])
    }

    static func open(_ destination: AccessLogConfig.Destination) throws(SystemError) -> Int32 {
        switch destination {
        case .stdout:
            return STDOUT_FILENO
        case .file(let path):
            while true {
                let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
                if fd >= 0 { return fd }
                if errno != EINTR { throw SystemError("access_log: open \(path)", errno: errno) }
            }
        }
    }
}

/// The writer thread: a loop of its own that writes each chunk with blocking `write` calls.
private final class AccessLogWriter: @unchecked Sendable {
    unowned let log: AccessLog
    private var fd: Int32?

    init(log: AccessLog, fd: Int32?) {
        self.log = log
        self.fd = fd
    }

    func run(pipe: WakeupPipe, mailbox: Mailbox<AccessLog.Message>) {
        let base = EventBase()
        var receiver: WakeupReceiver? = WakeupReceiver(base: base, pipe: pipe) { _ in
            mailbox.drain { message in
                switch message {
                case .lines(var chunk, let count):
                    self.write(chunk, lines: count)
                    self.log.written(&chunk)
                case .use(let fd):
                    self.close()
                    self.fd = fd
                case .stop:
                    base.exit()
                }
            }
        }
        base.run()
        receiver = nil
        close()
        withExtendedLifetime(receiver) {}
    }

    private func close() {
        if let fd, fd != STDOUT_FILENO { Socket.close(fd) }
        fd = nil
    }

    private func write(_ chunk: [UInt8], lines: Int) {
        guard let fd else { return }
        chunk.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n > 0 {
                    offset += n
                    continue
                }
                let code = errno
                if n < 0 && code == EINTR { continue }
                // The lines not written in full are dropped (a partial line may remain in the file).
                let rest = UnsafeRawBufferPointer(rebasing: raw[offset...])
                let unwritten = rest.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
                log.drop(unwritten, because: "write failed: \(errnoText(n < 0 ? code : EIO))")
                return
            }
        }
    }
}
