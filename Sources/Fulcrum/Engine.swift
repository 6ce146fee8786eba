import EventLoop
import Glibc
import FulcrumCore
import Logging

/// Runs a configuration: binds every listener, starts one worker thread per core (or as configured),
/// and handles SIGTERM/SIGINT with a graceful drain.
public final class Engine {
    public let config: FulcrumConfig
    private var logger: Logger

    public init(config: FulcrumConfig, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    public var workerCount: Int {
        switch config.workers {
        case .auto: return onlineCores()
        case .count(let n): return n
        }
    }

    /// Binds, serves until a signal and a drain, and returns the process exit status.
    public func run() throws(SystemError) -> Int32 {
        Socket.ignoreSIGPIPE()
        let fileLimit = Socket.raiseFileLimit()
        let workers = workerCount
        let sockets = try bindListeners(workers: workers)

        let base = EventBase()
        let (engineFD, engineSender) = try WakeupReceiver.makePipe()
        var threads: [LoopThread] = []
        var pipes: [(receive: Int32, send: WakeupSender)] = []
        for _ in 0..<workers { pipes.append(try WakeupReceiver.makePipe()) }
        let senders = pipes.map(\.send)
        let pools = config.pools.map { PoolShared(pool: $0, workers: workers) }
        let seed = UInt64(truncatingIfNeeded: base.cachedMicroseconds) ^ UInt64(getpid())
        for id in 0..<workers {
            let plan = WorkerPlan(id: id, config: config, listenerFDs: sockets.map { $0[id] }, wakeupFD: pipes[id].receive,
                                  wakeupSender: pipes[id].send, allWorkers: senders, engineSender: engineSender,
                                  pools: pools, seed: seed, logger: logger)
            threads.append(LoopThread.spawn(name: "fulcrum-w\(id)") {
                let worker = Worker(plan: plan)
                worker.run()
            })
        }

        let checker = HealthChecker(base: base, config: config, shared: pools.map(\.health), workers: senders,
                                    seed: seed, logger: logger)
        var finished = 0
        var signals = 0
        let done = WakeupReceiver(base: base, receive: engineFD, send: engineSender) { _ in
            finished += 1
            if finished == workers { base.exit() }
        }
        let onSignal: (Int32) -> Void = { [logger, config] number in
            signals += 1
            let name = number == SIGTERM ? "SIGTERM" : "SIGINT"
            if signals > 1 {
                logger.warning("second \(name), exiting at once")
                exit(1)
            }
            logger.info("\(name) received: stopping", metadata: [
                "drain_timeout": "\(config.drainTimeout.configText)",
            ])
            checker.stop()
            for sender in senders { sender.send(WorkerCommand.drain.rawValue) }
        }
        let watchers = [SIGTERM, SIGINT].map { SignalWatcher(base: base, signal: $0, handler: onSignal) }
        checker.start()
        logger.info("fulcrum ready", metadata: [
            "workers": "\(workers)", "event_method": "\(base.method)", "file_limit": "\(fileLimit)",
        ])
        base.run()
        for thread in threads { thread.join() }
        checker.stop()
        withExtendedLifetime((done, watchers, checker)) {}
        logger.info("stopped: all connections drained")
        return 0
    }

    /// One listening socket per listener per worker, all sharing the listener's address through
    /// SO_REUSEPORT. Port 0 is resolved by the first bind and reused for the rest.
    private func bindListeners(workers: Int) throws(SystemError) -> [[Int32]] {
        var all: [[Int32]] = []
        do throws(SystemError) {
            for listener in config.listeners {
                var endpoint = Endpoint(listener.address)
                var fds: [Int32] = []
                for _ in 0..<workers {
                    let fd: Int32
                    do throws(SystemError) {
                        fd = try Socket.listen(endpoint, reusePort: true, backlog: Int32(listener.backlog))
                    } catch {
                        for fd in fds { Socket.close(fd) }
                        throw error
                    }
                    fds.append(fd)
                    if endpoint.port == 0 { endpoint = try Socket.localEndpoint(fd) }
                }
                all.append(fds)
                let pool = config.pool(named: listener.pool)!
                logger.info("listening on \(endpoint)", metadata: [
                    "listener": "\(listener.name)", "pool": "\(pool.name)", "backends": "\(pool.backends.count)",
                    "balance": "\(pool.balance.name)",
                ])
            }
        } catch {
            for fds in all { for fd in fds { Socket.close(fd) } }
            throw error
        }
        return all
    }
}
