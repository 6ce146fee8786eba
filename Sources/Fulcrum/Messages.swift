import FulcrumCore

/// What the main loop tells a worker, through the worker's mailbox, in the order it happened. The worker
/// applies each message between events, so nothing on the data path takes a lock or waits for another
/// thread.
enum WorkerMessage: Sendable {
    /// Run the pool as the snapshot says: a new pool (with the state its workers share), or new settings
    /// or backends of a known one.
    case pool(PoolSnapshot, PoolShared)
    /// The listening sockets this worker accepts on from now on, each with its listener and pool. A socket
    /// the worker has not seen becomes its own (it closes it when it stops accepting on it); one it
    /// accepts on but that is not in the list is closed.
    case listeners([ListenerAssignment])
    /// An active check's verdict on a backend: its state, and whether this probe passed.
    case checked(pool: Int, slot: Int, state: ActiveHealth.State, passed: Bool)
    /// How long a drain may last from now on.
    case drainTimeout(Duration)
    /// Every message before this one was applied: say so to the main loop.
    case barrier(generation: Int)
}

/// One listening socket of a worker.
struct ListenerAssignment: Sendable {
    var fd: Int32
    var listener: String
    var pool: Int
    /// The listener's connection counters (the worker writes its own cells).
    var metrics: ListenerMetrics
    /// The listener's `defer_accept` in seconds, 0 when off: the worker sets it on the socket.
    var deferAcceptSeconds: Int32 = 0
}

/// What a worker tells the main loop, through the engine's mailbox.
enum EngineReport: Sendable {
    /// The worker applied every message up to `barrier(generation:)`.
    case applied(worker: Int, generation: Int)
    /// A backend's breaker changed state in this worker.
    case breaker(worker: Int, pool: Int, slot: Int, BreakerReport)
}
