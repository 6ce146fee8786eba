import CLibevent
import Glibc

/// Accepts connections on an already listening socket and hands each new descriptor, with the peer's
/// address, to its handler.
///
/// The listening socket carries TCP_NODELAY, which Linux copies to every socket it accepts, so no accepted
/// socket needs a `setsockopt` of its own. Each wakeup accepts a bounded batch (`AcceptBudget`) rather than
/// until the queue is empty: an accept that finds the queue empty costs a system call for nothing, and the
/// event is level-triggered, so connections left in the queue report again on the loop's next turn.
///
/// A failed accept (out of descriptors: EMFILE, ENFILE; out of kernel memory: ENOBUFS, ENOMEM) leaves the
/// connection in the kernel's queue, and the socket stays readable, so accepting again at once fails again
/// at once: the loop would spin at full CPU. Instead the listener pauses for a back-off that starts at
/// 10 ms and doubles up to 100 ms while accepts keep failing (as HAProxy and nginx pause), then tries
/// again; the first accept that succeeds resets it. Connections already accepted are not touched.
public final class Listener {
    private let fd: Int32
    private var event: OpaquePointer?
    private let onAccept: (Int32, Endpoint) -> Void
    private let onError: (AcceptPause) -> Void
    private var resumeTimer: Timer?
    private var backoff = Backoff()
    private var budget = AcceptBudget()

    /// What the error handler hears: one per pause, never per failed accept.
    public struct AcceptPause: Sendable {
        public let error: SystemError
        /// How long accepting pauses now.
        public let microseconds: Int64
        /// Accepts failed in a row since the last one that succeeded, this one included.
        public let failuresInARow: Int
    }

    /// Takes ownership of `fd`, a listening non-blocking socket: it is closed when the listener is closed
    /// or freed.
    public init(base: EventBase, fd: Int32, onAccept: @escaping (Int32, Endpoint) -> Void,
                onError: @escaping (AcceptPause) -> Void) {
        self.fd = fd
        self.onAccept = onAccept
        self.onError = onError
        // Set where the socket is made too (before `listen`); again here for a socket taken over from an
        // older process. Connections already queued keep what the socket had when they arrived.
        Socket.setNoDelay(fd)
        event = event_new(base.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, context in
            Unmanaged<Listener>.fromOpaque(context!)._withUnsafeGuaranteedRef { $0.acceptReady() }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
        resumeTimer = Timer(base: base) { [unowned self] in self.resume() }
    }

    deinit { close() }

    /// Stops accepting and closes the listening socket. Connections already accepted are not touched.
    public func close() {
        resumeTimer?.cancel()
        guard let event else { return }
        freeEvent(event)
        self.event = nil
        Glibc.close(fd)
    }

    private func acceptReady() {
        var storage = sockaddr_storage()
        var accepted = 0
        var emptied = false
        accepting: for _ in 0..<budget.limit {
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutableBytes(of: &storage) { raw in
                clibevent_accept4(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length,
                                  Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            }
            if client < 0 {
                let code = currentErrno
                switch code {
                case EAGAIN, EWOULDBLOCK:
                    emptied = true
                    break accepting
                // Gone before it was accepted (Linux reports the connection's pending network error on
                // accept), or interrupted: the next one may be fine.
                case EINTR, ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH,
                     EOPNOTSUPP, ENETUNREACH:
                    continue
                default:
                    failed(code)
                    break accepting
                }
            }
            backoff.reset()
            accepted += 1
            onAccept(client, Endpoint(storage: storage, length: length))
            // The handler may have closed or paused this listener.
            if event == nil || paused { break }
        }
        budget.record(accepted: accepted, emptied: emptied)
    }

    /// An accept failed for a reason retrying at once would only repeat.
    private func failed(_ code: Int32) {
        let pause = backoff.fail()
        self.pause(for: pause)
        onError(AcceptPause(error: SystemError("accept", errno: code), microseconds: pause,
                            failuresInARow: backoff.failuresInARow))
    }

    private var paused = false

    /// Stops accepting for `microseconds`, then resumes: for a worker that cannot open the descriptors its
    /// clients would need (out of descriptors for backend sockets), accepting more clients only to close
    /// them at once is wasted work.
    public func pause(for microseconds: Int64) {
        guard let event else { return }
        if !paused {
            event_del(event)
            paused = true
        }
        resumeTimer?.schedule(after: microseconds)
    }

    private func resume() {
        guard let event, paused else { return }
        paused = false
        event_add(event, nil)
    }
}

/// How many connections a listener accepts per wakeup: as many as the last wakeup found waiting, so that a
/// steady arrival rate is accepted without the extra accept that finds the queue empty (EAGAIN), growing
/// while wakeups keep using all of it.
///
/// A wakeup that empties the queue (its last accept failed with EAGAIN) after `n` connections sets the
/// limit to `n` (at least 1). A wakeup that uses the whole limit without emptying the queue suggests a
/// longer queue: after two such wakeups in a row the limit doubles, up to `maximum`. With one connection
/// per wakeup (a lightly loaded proxy), two wakeups in three accept without an EAGAIN, where accepting until
/// EAGAIN always costs one; under load the limit follows the queue's length.
public struct AcceptBudget: Sendable {
    public static let maximum = 64
    public private(set) var limit = 1
    private var fullInARow = 0

    public init() {}

    /// What a wakeup did: how many it accepted, and whether its last accept found the queue empty.
    public mutating func record(accepted: Int, emptied: Bool) {
        if emptied {
            limit = max(1, accepted)
            fullInARow = 0
        } else if accepted >= limit {
            fullInARow += 1
            if fullInARow >= 2 {
                limit = min(limit * 2, Self.maximum)
                fullInARow = 0
            }
        }
    }
}

/// The pause after a run of failures that retrying at once would only repeat: 10 ms after the first,
/// doubling up to 100 ms while they go on (as HAProxy and nginx pause), until `reset` on a success.
public struct Backoff: Sendable {
    public static let firstPause: Int64 = 10_000
    public static let longestPause: Int64 = 100_000

    /// The current pause in microseconds; 0 after a success.
    public private(set) var pause: Int64 = 0
    /// Failures since the last success.
    public private(set) var failuresInARow = 0

    public init() {}

    /// Counts one failure and returns how long to pause now.
    public mutating func fail() -> Int64 {
        pause = pause == 0 ? Self.firstPause : min(pause * 2, Self.longestPause)
        failuresInARow += 1
        return pause
    }

    @inline(__always)
    public mutating func reset() {
        if failuresInARow != 0 { self = Backoff() }
    }
}
