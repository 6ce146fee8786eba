import CLibevent
import Glibc

/// Receives the result of a `Connector`'s connect (never more than one per `start`).
public protocol ConnectorDelegate: AnyObject {
    /// The connect succeeded (`error` nil: take the socket with `takeSocket()`) or failed.
    func connectorFinished(_ connector: Connector, error: ConnectError?)
    /// The connect is still pending `slowAfter` microseconds after it started.
    func connectorSlow(_ connector: Connector)
}

/// One non-blocking connect to one address, bounded by a timeout, with an optional "slow" notice (for
/// hedging). It owns its socket until the connect succeeds and `takeSocket()` hands it over; `cancel()`
/// closes a pending one. A hedged connect is two connectors racing. A connector is reusable: its two
/// events are allocated once, with the connector.
public final class Connector {
    /// Which of a client's racing connects this is (0 primary, 1 hedge); the delegate's to use.
    public let leg: Int
    public unowned(unsafe) var delegate: (any ConnectorDelegate)?
    private let eventBase: EventBase
    private let events: UnsafeMutableRawPointer
    public private(set) var fd: Int32 = -1
    private var slowArmed = false

    public init(base: EventBase, leg: Int) {
        eventBase = base
        self.leg = leg
        events = .allocate(byteCount: 2 * Relay.eventSize, alignment: 16)
        events.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * Relay.eventSize)
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(slowEvent, base.base, -1, 0, connectorSlowCallback, me)
        event_assign(writeEvent, base.base, -1, 0, connectorCallback, me)
    }

    deinit {
        cancel()
        events.deallocate()
    }

    private var writeEvent: OpaquePointer { OpaquePointer(events) }
    private var slowEvent: OpaquePointer { OpaquePointer(events + Relay.eventSize) }

    public var isPending: Bool { fd >= 0 }

    /// Starts connecting to `endpoint`. Returns the error if the connect failed at once (no callback then
    /// follows); otherwise `connectorFinished` reports the result, within `timeoutMicroseconds`.
    public func start(_ endpoint: Endpoint, timeoutMicroseconds: Int64, slowAfterMicroseconds: Int64 = 0) -> ConnectError? {
        precondition(fd < 0, "connector already in use")
        let socketFD: Int32
        do throws(ConnectError) {
            socketFD = try Socket.startConnect(endpoint)
        } catch {
            return error
        }
        fd = socketFD
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(writeEvent, eventBase.base, socketFD, Int16(EV_WRITE), connectorCallback, me)
        var tv = timevalFrom(microseconds: timeoutMicroseconds)
        event_add(writeEvent, &tv)
        if slowAfterMicroseconds > 0 {
            var after = timevalFrom(microseconds: slowAfterMicroseconds)
            event_add(slowEvent, &after)
            slowArmed = true
        }
        return nil
    }

    /// Abandons a pending connect and closes its socket; does nothing when none is pending.
    public func cancel() {
        disarm()
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// The connected socket, now owned by the caller.
    public func takeSocket() -> Int32 {
        let socket = fd
        fd = -1
        return socket
    }

    private func disarm() {
        guard fd >= 0 else { return }
        event_del(writeEvent)
        if slowArmed {
            event_del(slowEvent)
            slowArmed = false
        }
    }

    func finished(timedOut: Bool) {
        guard fd >= 0 else { return }
        disarm()
        let error = timedOut ? .timedOut : Socket.connectError(fd)
        if error != nil {
            Glibc.close(fd)
            fd = -1
        }
        delegate?.connectorFinished(self, error: error)
    }

    func slow() {
        slowArmed = false
        guard fd >= 0 else { return }
        delegate?.connectorSlow(self)
    }
}

// The connector is kept alive across its own callback: the delegate may drop its last reference there.
private let connectorCallback: event_callback_fn = { _, what, context in
    let connector = Unmanaged<Connector>.fromOpaque(context!).takeUnretainedValue()
    connector.finished(timedOut: Int32(what) & EV_TIMEOUT != 0)
}

private let connectorSlowCallback: event_callback_fn = { _, _, context in
    let connector = Unmanaged<Connector>.fromOpaque(context!).takeUnretainedValue()
    connector.slow()
}
