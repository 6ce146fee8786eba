import CLibevent
import Glibc

/// Receives the result of a `Connector`'s connect (never more than one per `start`).
public protocol ConnectorDelegate: AnyObject {
    /// The connect succeeded (`error` nil: hand the connector to `Relay.attach`) or failed.
    func connectorFinished(_ connector: Connector, error: ConnectError?)
    /// The connect is still pending `slowAfter` microseconds after it started.
    func connectorSlow(_ connector: Connector)
}

/// One non-blocking connect to one address, bounded by a timeout, with an optional "slow" notice (for
/// hedging). It owns its socket until the connect succeeds and a `Relay` takes it (`Relay.attach`);
/// `cancel()` closes a pending one. A hedged connect is two connectors racing. A connector is reusable:
/// its events are allocated once, with the connector.
///
/// The socket is registered once, at the start, for everything its relay will want (reading, writing
/// and the peer's end-of-file, edge-triggered), and the registration goes to the relay with the socket,
/// so a connection costs one `epoll_ctl` here and none at the hand-over. The connect's outcome is its
/// first writable edge: without a readable bit beside it (an error reports both) the connect succeeded,
/// and `getsockopt(SO_ERROR)` is called only when both come together (an error, or a backend that spoke
/// first).
public final class Connector {
    /// Which of a client's racing connects this is (0 primary, 1 hedge); the delegate's to use.
    public let leg: Int
    public unowned(unsafe) var delegate: (any ConnectorDelegate)?
    private let eventBase: EventBase
    private let events: UnsafeMutableRawPointer
    public private(set) var fd: Int32 = -1
    private var slowArmed = false
    /// Once its socket is handed over: the relay that the socket's event now reports to.
    fileprivate var relayContext: UnsafeMutableRawPointer?
    /// When the pending connect times out, on the loop's monotonic clock.
    private var deadline: Int64 = 0
    /// What the connect's report said besides writable (EV_READ, EV_CLOSED): passed on to the relay, as
    /// the socket will not report it again.
    private var reportedAtConnect: Int32 = 0

    public init(base: EventBase, leg: Int) {
        eventBase = base
        self.leg = leg
        events = .allocate(byteCount: 3 * Relay.eventSize, alignment: 16)
        events.initializeMemory(as: UInt8.self, repeating: 0, count: 3 * Relay.eventSize)
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(ioEvent, base.base, -1, 0, connectorTimeoutCallback, me)
        event_assign(timeoutEvent, base.base, -1, 0, connectorTimeoutCallback, me)
        event_assign(slowEvent, base.base, -1, 0, connectorSlowCallback, me)
    }

    deinit {
        cancel()
        events.deallocate()
    }

    private var ioEvent: OpaquePointer { OpaquePointer(events) }
    private var timeoutEvent: OpaquePointer { OpaquePointer(events + Relay.eventSize) }
    private var slowEvent: OpaquePointer { OpaquePointer(events + 2 * Relay.eventSize) }

    public var isPending: Bool { fd >= 0 }

    /// Starts connecting to `endpoint`. Returns the error if the connect failed at once (no callback then
    /// follows); otherwise `connectorFinished` reports the result, within `timeoutMicroseconds` counted
    /// from `startedAt` (the loop's monotonic clock; now when nil).
    public func start(_ endpoint: Endpoint, timeoutMicroseconds: Int64, slowAfterMicroseconds: Int64 = 0,
                      startedAt: Int64? = nil) -> ConnectError? {
        precondition(fd < 0, "connector already in use")
        let socketFD: Int32
        do throws(ConnectError) {
            socketFD = try Socket.startConnect(endpoint)
        } catch {
            return error
        }
        fd = socketFD
        relayContext = nil
        reportedAtConnect = 0
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(ioEvent, eventBase.base, socketFD, Relay.socketEvents, connectorIOCallback, me)
        event_add(ioEvent, nil)
        deadline = (startedAt ?? eventBase.monotonicMicroseconds) + timeoutMicroseconds
        var tv = timevalFrom(microseconds: timeoutMicroseconds)
        event_add(timeoutEvent, &tv)
        if slowAfterMicroseconds > 0 {
            var after = timevalFrom(microseconds: slowAfterMicroseconds)
            event_add(slowEvent, &after)
            slowArmed = true
        }
        return nil
    }

    /// Abandons a pending connect (or a connected socket not handed over) and closes its socket; does
    /// nothing when none is pending, or once the socket belongs to a relay.
    public func cancel() {
        guard fd >= 0 else { return }
        disarmTimers()
        event_del(ioEvent)
        Glibc.close(fd)
        fd = -1
    }

    /// Hands the connected socket and its registered event to `relay`, which from now on receives the
    /// event's reports and eventually deletes the event and closes the socket. `reported`: what the
    /// connect's report said besides writable (EV_READ: bytes to read already; EV_CLOSED: the backend's
    /// end-of-file has arrived too).
    func handOver(to relay: Relay) -> (fd: Int32, event: OpaquePointer, reported: Int32) {
        precondition(fd >= 0, "no connected socket to hand over")
        relayContext = Unmanaged.passUnretained(relay).toOpaque()
        let socket = fd
        fd = -1
        return (socket, ioEvent, reportedAtConnect)
    }

    private func disarmTimers() {
        event_del(timeoutEvent)
        if slowArmed {
            event_del(slowEvent)
            slowArmed = false
        }
    }

    /// The socket's event while connecting: the first writable edge ends the connect.
    func ioReady(_ what: Int32) {
        guard fd >= 0, what & EV_WRITE != 0 else { return }
        disarmTimers()
        reportedAtConnect = what & (EV_READ | EV_CLOSED)
        // An error is reported as readable and writable; a writable edge alone is a connected socket.
        let error = reportedAtConnect != 0 ? Socket.connectError(fd) : nil
        if error != nil { cancel() }
        delegate?.connectorFinished(self, error: error)
    }

    func timedOut() {
        guard fd >= 0 else { return }
        // libevent's timers follow the coarse clock and may fire a few milliseconds early: a connect gets
        // its whole timeout.
        let remaining = deadline - eventBase.monotonicMicroseconds
        if remaining > 0 {
            var tv = timevalFrom(microseconds: remaining)
            event_add(timeoutEvent, &tv)
            return
        }
        cancel()
        delegate?.connectorFinished(self, error: .timedOut)
    }

    func slow() {
        slowArmed = false
        guard fd >= 0 else { return }
        delegate?.connectorSlow(self)
    }
}

// The socket's event reports to the connector until the socket is handed over, then to its relay. The
// connector is kept alive across its own callbacks: the delegate may drop its last reference there.
private let connectorIOCallback: event_callback_fn = { _, what, context in
    let unmanaged = Unmanaged<Connector>.fromOpaque(context!)
    if let relay = unmanaged._withUnsafeGuaranteedRef({ $0.relayContext }) {
        withRelay(relay) { $0.ready(Relay.upstream, Int32(what)) }
        return
    }
    unmanaged.takeUnretainedValue().ioReady(Int32(what))
}

private let connectorTimeoutCallback: event_callback_fn = { _, _, context in
    let connector = Unmanaged<Connector>.fromOpaque(context!).takeUnretainedValue()
    connector.timedOut()
}

private let connectorSlowCallback: event_callback_fn = { _, _, context in
    let connector = Unmanaged<Connector>.fromOpaque(context!).takeUnretainedValue()
    connector.slow()
}
