import CLibevent
import Glibc
import Synchronization

/// Why a connect to an upstream did not succeed.
public enum ConnectError: Error, Equatable, Sendable, CustomStringConvertible {
    case refused
    case timedOut
    case unreachable(Int32)
    /// The proxy's own resources ran out (descriptors, ephemeral ports, kernel memory): not the backend's
    /// fault, so it is not held against the backend's health.
    case local(Int32)
    case failed(Int32)

    public init(errno code: Int32) {
        switch code {
        case ECONNREFUSED: self = .refused
        case ETIMEDOUT: self = .timedOut
        case ENETUNREACH, EHOSTUNREACH, ENETDOWN, EHOSTDOWN: self = .unreachable(code)
        case EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS, ENOMEM: self = .local(code)
        default: self = .failed(code)
        }
    }

    public var isLocal: Bool {
        if case .local = self { return true }
        return false
    }

    /// Out of ephemeral ports (EADDRNOTAVAIL): they run out per destination, not for the whole process.
    public var isOutOfPorts: Bool { self == .local(EADDRNOTAVAIL) }

    public var description: String {
        switch self {
        case .refused: return "connection refused"
        case .timedOut: return "connect timed out"
        case .unreachable(let code), .failed(let code): return errnoText(code)
        case .local(let code): return "\(errnoText(code)) (a resource of this proxy, not the backend)"
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
    /// The engine closed it because its backend was marked down, or removed and its time to finish is over.
    case backendDown
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
        case .backendDown: return "backend marked down"
        case .noUpstream: return "no backend available"
        case .shutdown: return "shutdown"
        }
    }
}

/// Receives a relay's per-connection events (never per read).
public protocol RelayDelegate: AnyObject {
    func relayClosed(_ relay: Relay, reason: RelayCloseReason)
    /// With `RelayOptions.measureLatency`: the time from forwarding client bytes to the first bytes of the
    /// backend's answer, once per turn (request, then response).
    func relayMeasured(_ relay: Relay, latency microseconds: Int64)
    /// The backend sent its first byte on this connection.
    func relayFirstByte(_ relay: Relay)
    /// The backend closed, reset or timed out before sending any byte (`relay.canReplay` and
    /// `relay.clientFinished` tell the rest). `.replay` drops this upstream and keeps the client: the relay
    /// then calls `relayDetached`, and `attach` of another upstream sends the kept client bytes there
    /// first. `.proceed` lets the failure reach the client as it happened.
    func relayUpstreamFailed(_ relay: Relay, _ failure: UpstreamFailure) -> UpstreamFailureResponse
    /// After `relayUpstreamFailed` answered `.replay`: the failed upstream is gone.
    func relayDetached(_ relay: Relay)
}

public enum UpstreamFailureResponse: Sendable {
    case replay
    case proceed
}

/// How a backend failed before answering.
public enum UpstreamFailure: Equatable, Sendable, CustomStringConvertible {
    case closed
    case reset(Int32)
    case firstByteTimeout

    public var description: String {
        switch self {
        case .closed: return "closed before the first byte"
        case .reset(let code): return "\(errnoText(code)) before the first byte"
        case .firstByteTimeout: return "no first byte in time"
        }
    }
}

public struct RelayOptions: Sendable {
    /// Reading from one side pauses while the other side has this many bytes waiting to be sent.
    public var highWatermark: Int
    public var idleTimeoutMicroseconds: Int64
    /// Report request-to-first-byte latency through `relayMeasured`.
    public var measureLatency: Bool
    /// Keep up to this many client bytes until the backend's first byte, so they can be replayed; 0: off.
    public var replayLimit: Int
    /// Fail the backend if it sends nothing this long after the client's first bytes; 0: off.
    public var firstByteTimeoutMicroseconds: Int64
    /// Move a direction that carries bulk (a read that fills the loop's whole scratch buffer) through a
    /// pipe with `splice`, without copying its bytes into user space (see Relay+Splice.swift).
    public var splice: Bool

    public init(highWatermark: Int, idleTimeoutMicroseconds: Int64, measureLatency: Bool = false,
                replayLimit: Int = 0, firstByteTimeoutMicroseconds: Int64 = 0, splice: Bool = false) {
        self.highWatermark = highWatermark
        self.idleTimeoutMicroseconds = idleTimeoutMicroseconds
        self.measureLatency = measureLatency
        self.replayLimit = replayLimit
        self.firstByteTimeoutMicroseconds = firstByteTimeoutMicroseconds
        self.splice = splice
    }
}

/// The byte pump of one proxied client: the accepted client socket, at most one connected upstream
/// (handed over by a `Connector` through `attach`), and the bytes flowing between them. It decides
/// nothing about backends: failures before the backend's first byte go to its delegate, which answers
/// whether to replay.
///
/// The relay keeps itself alive (one retain) from creation until it closes; libevent callbacks reach it
/// through an unretained pointer. Bytes read from one socket are written straight to the other from the
/// loop's scratch buffer: two system calls, no allocation and no copy into user-space queues. Only what
/// the destination cannot take at once is queued, in an evbuffer that is flushed when the socket turns
/// writable. Reading from a side pauses while the other side has `highWatermark` bytes queued and
/// resumes once half of that has drained. An end-of-file from one side becomes a write shutdown on the
/// other after its queue is flushed; the relay closes when both directions are finished or on the first
/// error.
///
/// Each socket is registered with the kernel once, edge-triggered, for reading, writing and the peer's
/// end-of-file together (the client when the relay is made, the upstream by its `Connector` when the
/// connect starts), and removed once when the relay closes: four `epoll_ctl` per proxied connection,
/// whatever the traffic. Pausing, resuming and waiting for room to write change only the relay's own
/// flags. Edge-triggered readiness is reported once per change, so the relay reads until a read comes
/// back short (or the socket reported its end-of-file, until that is read too), and whatever it stops
/// short of (a pause, a turn handed to other connections) it asks for again with `event_active`, which
/// costs no system call.
public final class Relay {
    enum State { case idle, relaying, closed }

    public private(set) var delegate: (any RelayDelegate)?
    let eventBase: EventBase
    let options: RelayOptions
    var state = State.idle
    /// `sides[0]` is the client, `sides[1]` the upstream.
    let sides: UnsafeMutablePointer<Side>
    /// Storage for the relay's libevent events (see `EventSlot`), allocated once.
    let events: UnsafeMutableRawPointer
    /// The event watching the upstream socket while one is attached: the relay's own `.upstreamIO`, or
    /// the one its `Connector` registered when the connect started, now reporting to this relay.
    var upstreamEvent: OpaquePointer?
    var lastActivity: Int64 = 0
    /// When client bytes were forwarded with no answer yet (latency measurement); 0 when not waiting.
    var awaitingSince: Int64 = 0
    /// The current backend has sent at least one byte.
    public internal(set) var firstByteSeen = false
    /// The backend sent its end-of-file before the client did (who closed first, for the access log).
    public internal(set) var upstreamEndedFirst = false
    /// Copy of the client's bytes kept for replay until the first backend byte; nil when not kept.
    var replay: OpaquePointer?
    var firstByteTimerArmed = false
    var firstByteTimerAssigned = false
    /// Set while a libevent callback for this relay runs, so that closing defers the final release to here.
    var inCallback = false
    var releasePending = false
    unowned(unsafe) var group: RelayGroup?
    unowned(unsafe) var previous: Relay?
    unowned(unsafe) var next: Relay?

    /// Two counters the relay adds every chunk's size to, while an upstream is attached: bytes read from
    /// the client, then (the next cell) bytes read from the upstream. Written with a relaxed load and store
    /// (the loop's thread is their only writer), so a reader on another thread sees long-lived connections'
    /// bytes as they flow. Set by `attach`, cleared when the upstream is detached.
    var byteCounters: UnsafeMutablePointer<Atomic<Int>>?

    /// Bytes the client sent that were handed to the upstream, and bytes sent back to the client.
    public var bytesFromClient: Int { sides[0].bytesRead }
    public var bytesToClient: Int { sides[1].bytesRead }

    static let client = 0
    static let upstream = 1
    /// Reads per wakeup at most while a socket keeps filling the scratch buffer; then other connections
    /// get their turn and this one continues on the loop's next pass.
    static let readsPerWakeup = 4
    /// What every socket is registered for, once.
    static let socketEvents = Int16(EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST)

    /// One socket of the pair.
    struct Side {
        var fd: Int32 = -1
        var bytesRead = 0
        /// Bytes waiting to be written to this socket; created on the first partial write.
        var queue: OpaquePointer?
        /// Reading from this side stopped because the other side's queue is full.
        var paused = false
        /// This side sent end-of-file.
        var eof = false
        /// This side's write half was shut down after the other side's end-of-file was flushed.
        var writeShut = false
        /// Bytes are queued for this side: its next writable edge flushes them.
        var writeArmed = false
        /// The socket reported that its peer's end-of-file has arrived (EV_CLOSED): a short read is not
        /// the end of what there is to read, the end-of-file itself still is.
        var finReceived = false
        /// The socket reported something to read while the relay could not read it (not relaying yet):
        /// read it once relaying starts, as that edge will not be reported again.
        var readReady = false
        /// Reads from this side go through the other side's pipe (`splice`) rather than the scratch buffer.
        var splicing = false
        /// No pipe could be made for reads from this side (out of descriptors): they stay copied.
        var pipeRefused = false
        /// While bytes spliced from the other side are on their way to this side: their pipe, and how many
        /// wait in it.
        var pipe: SplicePipe?
        var piped = 0

        var queued: Int { queue.map { evbuffer_get_length($0) } ?? 0 }
        /// Everything waiting to be written to this socket: queued and piped.
        var pending: Int { queued + piped }
    }

    enum EventSlot: Int, CaseIterable {
        case clientIO, upstreamIO, idle, firstByte
    }

    static let eventSize = event_get_struct_event_size()

    @inline(__always)
    func event(_ slot: EventSlot) -> OpaquePointer {
        OpaquePointer(events + slot.rawValue * Self.eventSize)
    }

    /// The event watching `side`'s socket; only while relaying for the upstream.
    @inline(__always)
    func ioEvent(_ side: Int) -> OpaquePointer { side == Self.client ? event(.clientIO) : upstreamEvent! }

    /// Wraps an accepted, non-blocking client socket; the relay owns and eventually closes it. The socket
    /// comes with TCP_NODELAY from its listening socket (see `Listener`), and is registered at once, so
    /// that bytes the client sends while its backend is being picked and connected are known to be there
    /// when relaying starts.
    public init(base: EventBase, clientFD: Int32, options: RelayOptions, delegate: any RelayDelegate,
                group: RelayGroup) {
        self.eventBase = base
        self.options = options
        self.delegate = delegate
        // The events, then the two sides, in one allocation.
        let eventBytes = EventSlot.allCases.count * Self.eventSize
        events = .allocate(byteCount: eventBytes + 2 * MemoryLayout<Side>.stride, alignment: 16)
        sides = (events + eventBytes).bindMemory(to: Side.self, capacity: 2)
        sides.initialize(repeating: Side(), count: 2)
        sides[0].fd = clientFD
        if options.replayLimit > 0 { replay = evbuffer_new() }
        // Only slots in use are assigned, and only assigned ones are ever deleted: the client's and the idle
        // timer's now, the first-byte timer's when it is first armed, `.upstreamIO` by `attach(upstream:)`.
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(event(.clientIO), base.base, clientFD, Self.socketEvents, relayClientCallback, me)
        event_assign(event(.idle), base.base, -1, 0, relayIdleCallback, me)
        event_add(event(.clientIO), nil)
        _ = Unmanaged.passRetained(self)
        group.insert(self)
    }

    deinit {
        // `sides` lives in the same allocation (and `Side` holds nothing to release).
        events.deallocate()
    }

    /// Starts relaying between the client and the socket `connector` connected, which the relay now owns
    /// together with the connector's registration of it (no system call). Kept client bytes from an
    /// earlier upstream (a replay) are sent first. `byteCounters`: two cells (from client, to client) that
    /// the relay adds each chunk to while this upstream is attached. The connector must stay alive, and
    /// unused, until the relay closes or detaches the upstream.
    public func attach(_ connector: Connector, byteCounters: UnsafeMutablePointer<Atomic<Int>>? = nil) {
        precondition(state == .idle, "attach while \(state)")
        let handed = connector.handOver(to: self)
        sides[1].fd = handed.fd
        sides[1].readReady = handed.reported != 0
        sides[1].finReceived = handed.reported & EV_CLOSED != 0
        upstreamEvent = handed.event
        self.byteCounters = byteCounters
        established()
    }

    /// Starts relaying between the client and `upstreamFD`, a connected non-blocking socket the relay now
    /// owns and registers itself.
    public func attach(upstream upstreamFD: Int32, byteCounters: UnsafeMutablePointer<Atomic<Int>>? = nil) {
        precondition(state == .idle, "attach while \(state)")
        sides[1].fd = upstreamFD
        let me = Unmanaged.passUnretained(self).toOpaque()
        event_assign(event(.upstreamIO), eventBase.base, upstreamFD, Self.socketEvents, relayUpstreamCallback, me)
        event_add(event(.upstreamIO), nil)
        upstreamEvent = event(.upstreamIO)
        self.byteCounters = byteCounters
        established()
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


    /// Whether the kept client bytes could be replayed to another backend now.
    public var canReplay: Bool { replay != nil && !firstByteSeen }

    /// The client's end-of-file has been forwarded to the upstream (its write side is shut).
    public var clientFinished: Bool { sides[Relay.upstream].writeShut }

    /// Drops an established upstream that failed before answering, keeping the client and its kept bytes,
    /// so that `attach` can hand it another one. The client stays registered.
    func detachUpstream() {
        if let upstreamEvent { event_del(upstreamEvent) }
        upstreamEvent = nil
        event_del(event(.idle))
        disarmFirstByteTimer()
        Glibc.close(sides[1].fd)
        if let queue = sides[1].queue { evbuffer_free(queue) }
        releasePipe(Relay.upstream)
        sides[1] = Side()
        sides[0].splicing = false
        byteCounters = nil
        // The client keeps its end-of-file, if it sent one; its own output queue is empty (nothing came
        // back). Its socket may hold bytes or its end-of-file whose edge is gone (it was paused, or the
        // failed send stopped a read loop early): read it once relaying again.
        if !sides[0].eof { sides[0].readReady = true }
        sides[0].paused = false
        sides[0].writeArmed = false
        sides[0].writeShut = false
        awaitingSince = 0
        state = .idle
    }

    /// Frees every resource and tells the delegate. Returns false if the relay was already closed.
    @discardableResult
    func finish(_ reason: RelayCloseReason) -> Bool {
        guard state != .closed else { return false }
        let wasRelaying = state == .relaying
        state = .closed
        // Deregistered before the sockets close, so that each removal succeeds (and a descriptor number
        // the next connection reuses is not touched).
        event_del(event(.clientIO))
        if let upstreamEvent { event_del(upstreamEvent) }
        upstreamEvent = nil
        if wasRelaying { event_del(event(.idle)) }
        disarmFirstByteTimer()
        if let replay { evbuffer_free(replay) }
        replay = nil
        for i in 0..<2 {
            if sides[i].fd >= 0 { _ = clibevent_close(sides[i].fd) }
            sides[i].fd = -1
            if let queue = sides[i].queue { evbuffer_free(queue) }
            sides[i].queue = nil
            releasePipe(i)
        }
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

    /// Closes the relays whose delegate matches `predicate`.
    public func close(_ reason: RelayCloseReason, where predicate: (any RelayDelegate) -> Bool) -> Int {
        var matching: [Relay] = []
        var cursor = head
        while let relay = cursor {
            if let delegate = relay.delegate, predicate(delegate) { matching.append(relay) }
            cursor = relay.next
        }
        for relay in matching { relay.close(reason) }
        return matching.count
    }
}
