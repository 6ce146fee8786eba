import EventLoop
import FulcrumCore
import Glibc

/// One worker's access log lines: formatted into a chunk the worker owns, handed to the writer thread when
/// it is full, or 100 ms after its first line at the latest. Confined to the worker's thread.
final class AccessLogBuffer {
    let log: AccessLog
    private var chunk: [UInt8] = []
    private var lines = 0
    private var formatter = AccessLogFormatter()
    private var timer: Timer?

    init(base: EventBase, log: AccessLog) {
        self.log = log
        timer = Timer(base: base) { [unowned self] in self.flush() }
    }

    /// Whether connections accepted now are to be logged.
    @inline(__always)
    var isOn: Bool { log.isOn }

    /// Logs a connection that has ended.
    func append(_ record: AccessRecord, lifecycle: ConnectionLifecycle, pool: PoolRuntime, relay: Relay, now: Int64) {
        // A reload may have turned the log off since the connection was accepted.
        guard log.isOn else { return }
        append(record.entry(lifecycle: lifecycle, pool: pool, relay: relay, now: now, wallClock: WallClock.microseconds))
    }

    func append(_ entry: AccessLogEntry) {
        if chunk.capacity == 0 { chunk.reserveCapacity(AccessLog.chunkCapacity) }
        formatter.append(entry, format: log.format, to: &chunk)
        lines += 1
        if chunk.count >= AccessLog.chunkBytes {
            flush()
        } else if lines == 1 {
            timer?.schedule(after: AccessLog.flushMicroseconds)
        }
    }

    /// Hands the lines so far to the writer.
    func flush() {
        timer?.cancel()
        guard lines > 0 else { return }
        log.submit(&chunk, lines: lines)
        lines = 0
    }

    /// The worker stops: hands over what is left and frees the timer before the event base.
    func close() {
        flush()
        timer = nil
    }
}

/// What a session notes for its access log line, at the decisions it makes anyway. Only sessions accepted
/// while the access log is on carry one: a class, so that a session without one holds only a nil pointer
/// rather than a ~200-byte optional value it must initialize and destroy.
final class AccessRecord {
    let listener: String
    let client: Endpoint
    var acceptedAt: Int64 = 0
    /// The winning connect's duration.
    var connect: Int64?
    var firstByteAt: Int64?
    var closeReason: RelayCloseReason?
    /// The last connect that failed, if any.
    var connectError: ConnectError?

    init(listener: String, client: Endpoint) {
        self.listener = listener
        self.client = client
    }

    /// The line for a connection that has ended (`lifecycle` in its `.ended` state).
    func entry(lifecycle: ConnectionLifecycle, pool: PoolRuntime, relay: Relay, now: Int64, wallClock: Int64) -> AccessLogEntry {
        var end = AccessLogEnd.noBackend
        var reason: String?
        if case .ended(let ending) = lifecycle.state {
            switch ending {
            case .completed:
                end = relay.upstreamEndedFirst ? .backendClosed : .clientClosed
            case .clientError:
                end = .clientClosed
                if case .clientError(let code)? = closeReason, code != 0 { reason = errnoText(code) }
            case .upstreamError:
                end = .backendClosed
                if case .upstreamError(let code)? = closeReason, code != 0 { reason = errnoText(code) }
            case .idleTimeout: end = .idleTimeout
            case .backendDown: end = .backendDown
            case .shutdown: end = .shutdown
            case .queueFull: end = .queueFull
            case .queueTimeout: end = .queueTimeout
            case .retryBudget: end = .retryBudget
            case .localError: end = .localError
            case .noBackend: end = connectError == nil ? .noBackend : .connectFailed
            }
            if ending == .noBackend || ending == .retryBudget || ending == .localError, let connectError {
                reason = connectError.description
            }
        }
        return AccessLogEntry(
            time: wallClock, client: client, listener: listener, pool: pool.config.name,
            backend: lifecycle.lastBackend.map { pool.endpoints[$0] }, tries: lifecycle.attempts,
            replays: lifecycle.replays, hedged: lifecycle.hedged, connect: connect,
            firstByte: firstByteAt.map { $0 - acceptedAt }, duration: now - acceptedAt,
            bytesIn: relay.bytesFromClient, bytesOut: relay.bytesToClient, end: end, reason: reason)
    }
}
