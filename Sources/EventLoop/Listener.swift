import CLibevent
import Glibc

/// Accepts connections on an already listening socket and hands each new descriptor, with the peer's
/// address, to its handler.
///
/// A failed accept (out of descriptors: EMFILE, ENFILE; out of kernel memory: ENOBUFS, ENOMEM) leaves the
/// connection in the kernel's queue, and the socket stays readable, so accepting again at once fails again
/// at once: the loop would spin at full CPU. Instead the listener pauses for a back-off that starts at
/// 10 ms and doubles up to 100 ms while accepts keep failing (as HAProxy and nginx pause), then tries
/// again; the first accept that succeeds resets it. Connections already accepted are not touched.
public final class Listener {
    private var listener: OpaquePointer?
    private let onAccept: (Int32, Endpoint) -> Void
    private let onError: (AcceptPause) -> Void
    private var resumeTimer: Timer?
    private var backoff = Backoff()

    /// What the error handler hears: one per pause, never per failed accept.
    public struct AcceptPause: Sendable {
        public let error: SystemError
        /// How long accepting pauses now.
        public let microseconds: Int64
        /// Accepts failed in a row since the last one that succeeded, this one included.
        public let failuresInARow: Int
    }

    /// Takes ownership of `fd`: it is closed when the listener is closed or freed.
    public init(base: EventBase, fd: Int32, onAccept: @escaping (Int32, Endpoint) -> Void,
                onError: @escaping (AcceptPause) -> Void) {
        self.onAccept = onAccept
        self.onError = onError
        let flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC)
        listener = evconnlistener_new(base.base, { _, fd, address, length, context in
            let peer = Endpoint(address!, length: length)
            Unmanaged<Listener>.fromOpaque(context!)._withUnsafeGuaranteedRef { $0.accepted(fd, peer) }
        }, Unmanaged.passUnretained(self).toOpaque(), flags, 0, fd)
        evconnlistener_set_error_cb(listener) { _, context in
            let code = currentErrno
            Unmanaged<Listener>.fromOpaque(context!).takeUnretainedValue().failed(code)
        }
        resumeTimer = Timer(base: base) { [unowned self] in self.resume() }
    }

    deinit { close() }

    /// Stops accepting and closes the listening socket. Connections already accepted are not touched.
    public func close() {
        resumeTimer?.cancel()
        if let listener { evconnlistener_free(listener) }
        listener = nil
    }

    @inline(__always)
    private func accepted(_ fd: Int32, _ peer: Endpoint) {
        backoff.reset()
        onAccept(fd, peer)
    }

    /// libevent calls this for every accept error it does not retry itself (it retries EINTR, EAGAIN and
    /// ECONNABORTED).
    private func failed(_ code: Int32) {
        guard listener != nil else { return }
        let pause = backoff.fail()
        self.pause(for: pause)
        onError(AcceptPause(error: SystemError("accept", errno: code), microseconds: pause,
                            failuresInARow: backoff.failuresInARow))
    }

    /// Stops accepting for `microseconds`, then resumes: for a worker that cannot open the descriptors its
    /// clients would need (out of descriptors for backend sockets), accepting more clients only to close
    /// them at once is wasted work.
    public func pause(for microseconds: Int64) {
        guard let listener else { return }
        evconnlistener_disable(listener)
        resumeTimer?.schedule(after: microseconds)
    }

    private func resume() {
        guard let listener else { return }
        evconnlistener_enable(listener)
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
