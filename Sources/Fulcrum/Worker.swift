import EventLoop
import FulcrumCore
import Logging

/// Commands the engine sends to its workers through their wakeup pipes.
enum WorkerCommand: UInt8 {
    /// Stop accepting, let open connections finish, close what remains at the drain timeout.
    case drain = 0x64 // "d"
}

/// Counters of one worker, written only by its thread and summed by the engine when the worker ends.
struct WorkerStats {
    var accepted = 0
    var connectFailures = 0
    var clientsRefused = 0
    var bytesFromClients = 0
    var bytesToClients = 0
}

/// What a worker thread needs from the engine: plain values and descriptors, safe to hand across threads.
struct WorkerPlan: Sendable {
    var id: Int
    var config: FulcrumConfig
    /// This worker's own listening socket for each listener, in config order.
    var listenerFDs: [Int32]
    var wakeupFD: Int32
    var wakeupSender: WakeupSender
    /// Told with this worker's id when the worker's loop has ended.
    var engineSender: WakeupSender
    var logger: Logger
}

/// One event loop thread: accepts on its own SO_REUSEPORT sockets and relays every connection it accepts
/// to the end, so that nothing is shared between workers on the data path.
final class Worker {
    let id: Int
    let base = EventBase()
    var logger: Logger
    var stats = WorkerStats()
    private let plan: WorkerPlan
    private let relays = RelayGroup()
    private var pools: [PoolRuntime] = []
    private var listeners: [Listener] = []
    private var wakeup: WakeupReceiver?
    private var drainTimer: Timer?
    private var draining = false

    init(plan: WorkerPlan) {
        self.plan = plan
        id = plan.id
        logger = plan.logger
        logger[metadataKey: "worker"] = "\(plan.id)"
        let config = plan.config
        pools = config.pools.map { PoolRuntime(config: $0, bufferSize: config.bufferSize) }
        for (index, listener) in config.listeners.enumerated() {
            let pool = pools.first { $0.config.name == listener.pool }!
            listeners.append(Listener(base: base, fd: plan.listenerFDs[index], onAccept: { [unowned self] fd in
                self.accept(fd, pool: pool)
            }, onError: { [unowned self] error in
                self.logger.error("accept failed", metadata: ["listener": "\(listener.name)", "error": "\(error)"])
            }))
        }
        wakeup = WakeupReceiver(base: base, receive: plan.wakeupFD, send: plan.wakeupSender) { [unowned self] byte in
            if WorkerCommand(rawValue: byte) == .drain { self.drain() }
        }
    }

    /// Runs the loop until the worker has drained; then frees every handle before the base.
    func run() {
        base.run()
        relays.closeAll(.shutdown)
        listeners.removeAll()
        drainTimer = nil
        wakeup = nil
        plan.engineSender.send(UInt8(id))
    }

    private func accept(_ fd: Int32, pool: PoolRuntime) {
        stats.accepted += 1
        let session = Session(worker: self, pool: pool)
        let relay = Relay(base: base, clientFD: fd, options: pool.relayOptions, delegate: session, group: relays)
        session.connectNext(relay)
    }

    func relayEnded() {
        if draining && relays.count == 0 { base.exit() }
    }

    private func drain() {
        guard !draining else { return }
        draining = true
        for listener in listeners { listener.close() }
        logger.info("listeners closed, draining open connections", metadata: ["open": "\(relays.count)"])
        if relays.count == 0 {
            base.exit()
            return
        }
        let timer = Timer(base: base) { [unowned self] in
            self.logger.warning("drain timeout reached, closing remaining connections", metadata: ["open": "\(self.relays.count)"])
            self.relays.closeAll(.shutdown)
            self.base.exit()
        }
        timer.schedule(after: plan.config.drainTimeout)
        drainTimer = timer
    }
}
