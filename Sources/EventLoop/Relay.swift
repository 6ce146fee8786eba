import CLibevent
import Glibc

/// Why a connect to an upstream did not succeed.
public enum ConnectError: Error, Equatable, Sendable, CustomStringConvertible {
    case refused
    case timedOut
    case unreachable(Int32)
    case failed(Int32)

    init(errno code: Int32) {
        switch code {
        case ECONNREFUSED: self = .refused
        case ETIMEDOUT: self = .timedOut
        case ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ENETDOWN, EHOSTDOWN: self = .unreachable(code)
        default: self = .failed(code)
        }
    }

    public var description: String {
        switch self {
        case .refused: return "connection refused"
        case .timedOut: return "connect timed out"
        case .unreachable(let code), .failed(let code): return errnoText(code)
        }
    }
}

/// How a relay ended.
public enum RelayCloseReason: Equatable, Sendable, CustomStringConvertible {
    /// Both sides finished sending and every byte was delivered.
    case completed
    case clientError(Int32)
    case upstreamError(Int32)
    case idleTimeout
    /// The engine gave up before a relay was established (every backend failed, or the queue was full).
    case noUpstream
    /// The process is shutting down and the drain timeout passed.
    case shutdown

    public var description: String {
        switch self {
        case .completed: return "completed"
        case .clientError(let code): return "client error: \(errnoText(code))"
        case .upstreamError(let code): return "backend error: \(errnoText(code))"
        case .idleTimeout: return "idle timeout"
        case .noUpstream: return "no backend available"
        case .shutdown: return "shutdown"
        }
    }
}

/// Receives a relay's per-connection events (never per read).
public protocol RelayDelegate: AnyObject {
    func relayConnected(_ relay: Relay)
    func relayConnectFailed(_ relay: Relay, error: ConnectError)
    func relayClosed(_ relay: Relay, reason: RelayCloseReason)
}

public struct RelayOptions: Sendable {
    /// Reading from one side pauses while the other side has this many bytes waiting to be sent.
    public var highWatermark: Int
    public var idleTimeoutMicroseconds: Int64

    public init(highWatermark: Int, idleTimeoutMicroseconds: Int64) {
        self.highWatermark = highWatermark
        self.idleTimeoutMicroseconds = idleTimeoutMicroseconds
    }
}

/// One proxied client: the accepted client socket, at most one upstream connection (connecting or
/// established), and the bytes flowing between them.
///
/// The relay owns both bufferevents and keeps itself alive (one retain) from creation until it closes;
/// libevent callbacks reach it through an unretained pointer. Bytes move from one side's input buffer to
/// the other's output buffer with `evbuffer_add_buffer`, which moves chains without copying. Reading from
/// a side stops while the other side's output holds `highWatermark` bytes and resumes once half of that
/// has drained. An end-of-file from one side becomes a write shutdown on the other, after its pending
/// output is flushed; the relay closes when both directions are finished or on the first error.
public final class Relay {
    enum State { case idle, connecting, relaying, closed }

    public private(set) var delegate: (any RelayDelegate)?
    let eventBase: EventBase
    let options: RelayOptions
    var state = State.idle
    var client: OpaquePointer
    var upstream: OpaquePointer?
    var clientSide = Side()
    var upstreamSide = Side()
    var idleTimer: OpaquePointer?
    var lastActivity: Int64 = 0
    /// Set while a libevent callback for this relay runs, so that closing defers the final release.
    var inCallback = false
    var releasePending = false
    unowned(unsafe) var group: RelayGroup?
    unowned(unsafe) var previous: Relay?
    unowned(unsafe) var next: Relay?

    /// Bytes the client sent that were handed to the upstream, and bytes sent back to the client.
    public var bytesFromClient: Int { clientSide.bytesRead }
    public var bytesToClient: Int { upstreamSide.bytesRead }
    /// The upstream this relay is connecting or connected to.
    public private(set) var upstreamEndpoint: Endpoint?
    /// When the relay was created, in the loop's microseconds.
    public let startedAt: Int64

    struct Side {
        var bytesRead = 0
        /// Reading paused because the other side's output is full.
        var paused = false
        /// This side sent end-of-file.
        var eof = false
        /// This side's write half was shut down after the other side's EOF was flushed.
        var writeShut = false
    }

    /// Wraps an accepted, non-blocking client socket; the relay owns and eventually closes it.
    public init(base: EventBase, clientFD: Int32, options: RelayOptions, delegate: any RelayDelegate,
                group: RelayGroup) {
        self.eventBase = base
        self.options = options
        self.delegate = delegate
        self.startedAt = base.cachedMicroseconds
        Self.setNoDelay(clientFD)
        client = bufferevent_socket_new(base.base, clientFD, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue))!
        let me = Unmanaged.passRetained(self).toOpaque()
        bufferevent_setcb(client, relayReadCallback, relayWriteCallback, relayEventCallback, me)
        tune(client)
        group.insert(self)
    }

    /// Starts a non-blocking connect to `endpoint`, bounded by `timeoutMicroseconds`. The outcome arrives
    /// as `relayConnected` or `relayConnectFailed`, unless the connect fails at once: then the error is
    /// returned here and no callback follows.
    public func connect(to endpoint: Endpoint, timeoutMicroseconds: Int64) -> ConnectError? {
        precondition(state == .idle, "connect while \(state)")
        upstreamEndpoint = endpoint
        let fd = socket(endpoint.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return ConnectError(errno: currentErrno) }
        Self.setNoDelay(fd)
        var result: Int32 = 0
        repeat {
            result = endpoint.withSockaddr { Glibc.connect(fd, $0, $1) }
        } while result < 0 && currentErrno == EINTR
        if result < 0 && currentErrno != EINPROGRESS {
            let error = ConnectError(errno: currentErrno)
            Socket.close(fd)
            return error
        }
        let bev = bufferevent_socket_new(eventBase.base, fd, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue))!
        bufferevent_setcb(bev, relayReadCallback, relayWriteCallback, relayEventCallback,
                          Unmanaged.passUnretained(self).toOpaque())
        tune(bev)
        var tv = timevalFrom(microseconds: timeoutMicroseconds)
        bufferevent_set_timeouts(bev, nil, &tv)
        upstream = bev
        state = .connecting
        // With no address, libevent takes the socket as already connecting and waits for it to be writable.
        if bufferevent_socket_connect(bev, nil, 0) != 0 {
            let error = ConnectError(errno: currentErrno)
            dropUpstream()
            return error
        }
        return nil
    }

    /// Closes both sides now. Safe to call from the delegate; a second call does nothing.
    public func close(_ reason: RelayCloseReason) {
        guard finish(reason) else { return }
        if inCallback {
            releasePending = true
        } else {
            Unmanaged.passUnretained(self).release()
        }
    }

    private func tune(_ bev: OpaquePointer?) {
        let chunk = min(options.highWatermark, 256 << 10)
        bufferevent_set_max_single_read(bev, chunk)
        bufferevent_set_max_single_write(bev, chunk)
    }

    private static func setNoDelay(_ fd: Int32) {
        try? Socket.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }

    func dropUpstream() {
        if let upstream { bufferevent_free(upstream) }
        upstream = nil
        state = .idle
    }

    /// Frees every resource and tells the delegate. Returns false if the relay was already closed.
    @discardableResult
    func finish(_ reason: RelayCloseReason) -> Bool {
        guard state != .closed else { return false }
        state = .closed
        if let idleTimer {
            event_free(idleTimer)
            self.idleTimer = nil
        }
        if let upstream { bufferevent_free(upstream) }
        upstream = nil
        bufferevent_free(client)
        group?.remove(self)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.relayClosed(self, reason: reason)
        return true
    }
}

/// The live relays of one worker, linked through the relays themselves so that tracking them costs no
/// allocation. Used to close what is left when a drain runs out of time.
public final class RelayGroup {
    private unowned(unsafe) var head: Relay?
    public private(set) var count = 0

    public init() {}

    func insert(_ relay: Relay) {
        relay.group = self
        relay.next = head
        head?.previous = relay
        head = relay
        count += 1
    }

    func remove(_ relay: Relay) {
        if let previous = relay.previous { previous.next = relay.next } else { head = relay.next }
        relay.next?.previous = relay.previous
        relay.previous = nil
        relay.next = nil
        relay.group = nil
        count -= 1
    }

    /// Closes every relay in the group.
    public func closeAll(_ reason: RelayCloseReason) {
        while let relay = head { relay.close(reason) }
    }
}
