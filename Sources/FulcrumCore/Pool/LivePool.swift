/// Who set a backend's value: the configuration file, a discovery source, or an operator through the admin
/// API. The file and discovery set a backend's *base* values; the admin API sets *overrides* (weight,
/// operator state) that win over the base and survive reloads and discovery updates until the admin API
/// clears them.
public enum ValueSource: String, Equatable, Sendable {
    case file
    case discovery
    case admin
}

/// The admin API's overrides of one backend; nil where the base value applies.
public struct BackendOverrides: Equatable, Sendable {
    public var weight: Int?
    public var state: OperatorState?

    public init(weight: Int? = nil, state: OperatorState? = nil) {
        self.weight = weight
        self.state = state
    }

    public var isEmpty: Bool { weight == nil && state == nil }
}

/// A backend's breaker as one worker last reported it.
public struct BreakerReport: Equatable, Sendable {
    public enum State: String, Equatable, Sendable {
        case closed
        case open
        case halfOpen = "half-open"
    }

    public var state: State
    /// When the worker's breaker entered this state (monotonic microseconds).
    public var since: Microseconds
    /// What opened it: the outcome that tripped it; nil when closed.
    public var reason: String?

    public init(state: State, since: Microseconds, reason: String? = nil) {
        self.state = state
        self.since = since
        self.reason = reason
    }

    public static let closed = BreakerReport(state: .closed, since: 0)
}

/// Breakers are per worker: this is how many workers have a backend's breaker open or half-open, since
/// when, and why, as the status and the logs show it ("open on 1 of 2 workers since …: connect refused").
public struct BreakerSummary: Equatable, Sendable, CustomStringConvertible {
    public var workers: Int
    public var open: Int
    public var halfOpen: Int
    /// The earliest time a worker that is not closed entered its state.
    public var since: Microseconds?
    /// The reason of the most recent opening among the workers that are not closed.
    public var reason: String?

    public init(_ reports: [BreakerReport]) {
        workers = reports.count
        open = reports.filter { $0.state == .open }.count
        halfOpen = reports.filter { $0.state == .halfOpen }.count
        let notClosed = reports.filter { $0.state != .closed }
        since = notClosed.map(\.since).min()
        reason = notClosed.max { $0.since < $1.since }?.reason
    }

    /// Closed on every worker.
    public var isClosed: Bool { open == 0 && halfOpen == 0 }

    public var description: String { counts + (isClosed ? "" : reason.map { ": \($0)" } ?? "") }

    /// How many workers have it open or half-open: `open on 1 of 2 workers`, or `closed`.
    public var counts: String {
        if isClosed { return "closed on all \(workers) workers" }
        var parts: [String] = []
        if open > 0 { parts.append("open on \(open) of \(workers) workers") }
        if halfOpen > 0 { parts.append("half-open on \(halfOpen) of \(workers) workers") }
        return parts.joined(separator: ", ")
    }
}

/// One entry of a backend's event history: what changed, why, and who did it.
public struct BackendEvent: Equatable, Sendable {
    public enum Source: String, Sendable {
        case check
        case breaker
        case `operator`
        case config
        case discovery
    }

    /// Wall-clock time, microseconds since the Unix epoch (for people; nothing is timed by it).
    public var at: Int64
    public var source: Source
    public var message: String

    public init(at: Int64, source: Source, message: String) {
        self.at = at
        self.source = source
        self.message = message
    }
}

/// One backend of a pool as it runs now.
public struct LiveBackend: Equatable, Sendable {
    /// The backend's place in every worker's arrays for this pool: assigned when its address is first seen
    /// and never reused for another address, so a backend removed and listed again takes its old slot back
    /// (with its counters, health and breaker state).
    public let slot: Int
    public let id: BackendID
    /// The values its source gives it: the file's when the file lists it, else the first discovery
    /// source's (by name) that lists it.
    public var base: FulcrumConfig.Backend
    public var baseSource: ValueSource
    /// Who lists it and with which values: `LivePool.fileListing`, or a discovery source's name. A backend
    /// stays listed while anyone lists it.
    public internal(set) var listings: [String: FulcrumConfig.Backend] = [:]
    public var overrides = BackendOverrides()
    /// Listed by its source. A backend no longer listed takes no new connections; its open connections
    /// run until they end.
    public var listed = true
    /// The active checks' view, as the health checker last reported it.
    public var check: ActiveHealth.State = .unknown
    /// Why the last check failed, while it is down.
    public var checkReason: String?
    /// Each worker's breaker, as last reported.
    public var breakers: [BreakerReport]
    /// The last `LivePool.eventCapacity` changes, oldest first.
    public private(set) var events: [BackendEvent] = []
    /// When the check state last changed (wall clock, microseconds).
    public var checkSince: Int64?

    mutating func record(_ event: BackendEvent) {
        if events.count >= LivePool.eventCapacity { events.removeFirst(events.count - LivePool.eventCapacity + 1) }
        events.append(event)
    }

    /// Counts the times the backend came back after it was gone for good (removed, and no connection of
    /// its left): each time it starts over, unknown to the checks and with closed breakers, like a new one.
    public var incarnation = 0

    public init(slot: Int, id: BackendID, base: FulcrumConfig.Backend, source: ValueSource, workers: Int) {
        self.slot = slot
        self.id = id
        self.base = base
        baseSource = source
        breakers = Array(repeating: .closed, count: max(0, workers))
    }

    /// The values workers use: the base, with the admin's overrides applied.
    public var effective: FulcrumConfig.Backend {
        var value = base
        if let weight = overrides.weight { value.weight = weight }
        if let state = overrides.state { value.state = state }
        return value
    }

    /// Which source set the value in effect for `key` (`weight`, `priority`, `max_connections`, `state`).
    public func source(of key: String) -> ValueSource {
        switch key {
        case "weight" where overrides.weight != nil: return .admin
        case "state" where overrides.state != nil: return .admin
        default: return baseSource
        }
    }

    public var breaker: BreakerSummary { BreakerSummary(breakers) }
}

/// What a worker applies to its view of a pool: the settings, and every backend slot the pool has ever
/// had with the values in effect. Immutable and complete, so a worker that applies the latest snapshot is
/// up to date whatever it missed; a worker compares it with what it runs and changes only what differs.
public struct PoolSnapshot: Sendable {
    public struct Slot: Equatable, Sendable {
        public var address: SocketAddress
        /// Effective values (base with overrides); `state` is the operator state.
        public var backend: FulcrumConfig.Backend
        public var listed: Bool
        /// A new incarnation starts over: unknown to the checks, breakers closed.
        public var incarnation: Int
    }

    /// The pool's index in the process, stable for its lifetime.
    public let index: Int
    /// The pool's settings; its `backends` are the listed backends' effective values in source order.
    public let settings: FulcrumConfig.Pool
    /// Every slot, by slot number.
    public let slots: [Slot]
    /// The listed slots in source order (the order `balance: first` fills in).
    public let order: [Int]
}

/// The live state of one pool, owned by the main loop: its settings and its backends by stable slot, with
/// where each value came from. Reload, the admin API and discovery change a pool only through these
/// operations; each change produces a `PoolSnapshot` for the workers.
public struct LivePool: Sendable {
    public let index: Int
    public let name: String
    /// The pool's settings (every key but `backends`) as last set.
    public private(set) var settings: FulcrumConfig.Pool
    /// Every backend the pool has had, by slot; removed ones stay with `listed == false`.
    public private(set) var backends: [LiveBackend] = []
    /// Listed slots in source order.
    public private(set) var order: [Int] = []
    /// No listener points at the pool any more and the file no longer defines it.
    public var retired = false
    private var slotByAddress: [SocketAddress: Int] = [:]
    private let workers: Int

    /// Slots a pool can have over the life of the process (the shared connection counters' size).
    public static let maxSlots = SharedBackendCounters.maxBackends
    /// Events kept per backend.
    public static let eventCapacity = 64

    /// The listing name of the configuration file.
    public static let fileListing = "file"

    public init(index: Int, pool: FulcrumConfig.Pool, workers: Int, source: ValueSource = .file) {
        self.index = index
        name = pool.name
        settings = pool
        self.workers = workers
        for backend in pool.backends { _ = add(backend, source: source) }
    }

    public func slot(of address: SocketAddress) -> Int? { slotByAddress[address] }

    public func backend(_ address: SocketAddress) -> LiveBackend? { slotByAddress[address].map { backends[$0] } }

    /// The listed backends, in source order.
    public var listed: [LiveBackend] { order.map { backends[$0] } }

    // MARK: - Operations

    /// Lists a backend on behalf of the file (`.file`) or of discovery. See `list(_:by:gone:)`.
    public mutating func add(_ backend: FulcrumConfig.Backend, source: ValueSource,
                             gone: (Int) -> Bool = { _ in false }) -> Int? {
        list(backend, by: source == .file ? Self.fileListing : source.rawValue, gone: gone)
    }

    /// Lists a backend on behalf of `listing` (the file, or a discovery source by name). A new address
    /// takes the next slot; one seen before takes its old slot back, with its base values replaced and its
    /// overrides kept. A backend removed while its connections still drain is the same backend when it
    /// comes back (its health carries on); one whose connections had all ended (`gone` says so for a slot)
    /// starts over as a new incarnation. Returns the slot, or nil when the pool has used every slot it can
    /// have.
    public mutating func list(_ backend: FulcrumConfig.Backend, by listing: String,
                              gone: (Int) -> Bool = { _ in false }) -> Int? {
        if let slot = slotByAddress[backend.address] {
            backends[slot].listings[listing] = backend
            rebase(slot)
            if !backends[slot].listed {
                backends[slot].listed = true
                order.append(slot)
                if gone(slot) {
                    backends[slot].incarnation += 1
                    backends[slot].check = .unknown
                    backends[slot].checkReason = nil
                    backends[slot].breakers = Array(repeating: .closed, count: backends[slot].breakers.count)
                    // A registry that lists an address again after it was gone for good lists another
                    // instance (addresses are reused): the operator's overrides were for the old one.
                    if listing != Self.fileListing { backends[slot].overrides = BackendOverrides() }
                }
            }
            return slot
        }
        guard backends.count < Self.maxSlots else { return nil }
        let slot = backends.count
        var live = LiveBackend(slot: slot, id: BackendID(pool: name, address: backend.address), base: backend,
                               source: listing == Self.fileListing ? .file : .discovery, workers: workers)
        live.listings[listing] = backend
        backends.append(live)
        slotByAddress[backend.address] = slot
        order.append(slot)
        return slot
    }

    /// `listing` no longer lists the backend. It stays listed while another listing has it (taking that
    /// one's values); otherwise it takes no new connections and its open connections run until they end.
    /// Its slot and state stay, in case it comes back. True when it is no longer listed at all.
    @discardableResult
    public mutating func unlist(_ address: SocketAddress, by listing: String) -> Bool {
        guard let slot = slotByAddress[address], backends[slot].listings.removeValue(forKey: listing) != nil else {
            return false
        }
        if backends[slot].listings.isEmpty {
            backends[slot].listed = false
            order.removeAll { $0 == slot }
            return true
        }
        rebase(slot)
        return false
    }

    /// The base values are the file's when the file lists the backend, else the first discovery listing's.
    private mutating func rebase(_ slot: Int) {
        let listings = backends[slot].listings
        if let file = listings[Self.fileListing] {
            backends[slot].base = file
            backends[slot].baseSource = .file
        } else if let first = listings.keys.min() {
            backends[slot].base = listings[first]!
            backends[slot].baseSource = .discovery
        }
    }

    /// Stops listing a backend for everyone: no new connections; its open connections run until they end.
    /// Its slot and state stay, in case it comes back. False if it was not listed.
    @discardableResult
    public mutating func remove(_ address: SocketAddress) -> Bool {
        guard let slot = slotByAddress[address], backends[slot].listed else { return false }
        backends[slot].listings = [:]
        backends[slot].listed = false
        order.removeAll { $0 == slot }
        return true
    }

    /// Sets (or, with nil, clears) the admin's weight override. False for an unknown backend.
    @discardableResult
    public mutating func setWeight(_ address: SocketAddress, _ weight: Int?) -> Bool {
        guard let slot = slotByAddress[address] else { return false }
        backends[slot].overrides.weight = weight
        return true
    }

    /// Sets (or, with nil, clears) the admin's operator-state override. False for an unknown backend.
    @discardableResult
    public mutating func setOperatorState(_ address: SocketAddress, _ state: OperatorState?) -> Bool {
        guard let slot = slotByAddress[address] else { return false }
        backends[slot].overrides.state = state
        return true
    }

    /// Replaces the pool's settings (every key but its backends) for new connections.
    public mutating func replaceSettings(_ pool: FulcrumConfig.Pool) {
        settings = pool
    }

    /// What a reload does to a kept pool: the settings replaced; the file's backends added or updated
    /// (base values only: overrides stay) in the file's order; backends the file listed before and lists no
    /// more removed (backends another source lists are that source's to remove). `gone` as for `add`.
    /// Returns the addresses that could not get a slot.
    @discardableResult
    public mutating func apply(file pool: FulcrumConfig.Pool, gone: (Int) -> Bool = { _ in false }) -> [SocketAddress] {
        replaceSettings(pool)
        // Linear in the pool's size: a file that replaces thousands of backends must not stall the main loop.
        let addresses = Set(pool.backends.map(\.address))
        for slot in order where backends[slot].listings[Self.fileListing] != nil
            && !addresses.contains(backends[slot].id.address) {
            backends[slot].listings[Self.fileListing] = nil
            if backends[slot].listings.isEmpty { backends[slot].listed = false } else { rebase(slot) }
        }
        order.removeAll { !backends[$0].listed }
        var failed: [SocketAddress] = []
        var fileOrder: [Int] = []
        for backend in pool.backends {
            if let slot = list(backend, by: Self.fileListing, gone: gone) { fileOrder.append(slot) } else { failed.append(backend.address) }
        }
        // Backends listed by another source keep their place after the file's.
        let inFile = Set(fileOrder)
        order = fileOrder + order.filter { !inFile.contains($0) }
        return failed
    }

    /// How many listed backends only discovery lists (what `max_backends` caps).
    public var discoveredCount: Int { order.count { backends[$0].listings[Self.fileListing] == nil } }

    // MARK: - Reports

    /// The health checker's latest verdict on a backend; a change of state at `at` goes into its history
    /// with `detail`.
    public mutating func checked(slot: Int, _ state: ActiveHealth.State, reason: String?, at: Int64 = 0,
                                 detail: String? = nil) {
        guard backends.indices.contains(slot) else { return }
        if backends[slot].check != state {
            backends[slot].checkSince = at
            backends[slot].record(BackendEvent(at: at, source: .check, message: detail ?? "check: \(state.rawValue)"))
        }
        backends[slot].check = state
        backends[slot].checkReason = state == .down ? reason : nil
    }

    /// Adds an entry to a backend's history.
    public mutating func record(slot: Int, _ event: BackendEvent) {
        guard backends.indices.contains(slot) else { return }
        backends[slot].record(event)
    }

    /// A worker's breaker for a backend changed.
    public mutating func breakerChanged(slot: Int, worker: Int, _ report: BreakerReport) {
        guard backends.indices.contains(slot), backends[slot].breakers.indices.contains(worker) else { return }
        backends[slot].breakers[worker] = report
    }

    // MARK: - Snapshot

    /// The pool as the workers must run it: its settings with the listed backends' effective values.
    public var effectiveSettings: FulcrumConfig.Pool {
        var pool = settings
        pool.backends = order.map { backends[$0].effective }
        return pool
    }

    public func snapshot() -> PoolSnapshot {
        PoolSnapshot(index: index, settings: effectiveSettings,
                     slots: backends.map {
                         .init(address: $0.id.address, backend: $0.effective, listed: $0.listed, incarnation: $0.incarnation)
                     },
                     order: order)
    }
}
