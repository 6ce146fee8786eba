import EventLoop
import Glibc
import FulcrumCore
import Logging

/// Runs a configuration: binds every listener, starts one worker thread per core (or as configured),
/// and handles SIGTERM/SIGINT with a graceful drain.
///
/// ```text
///   starting ──first round of active checks done (bounded by their timeout)──▶ serving
///      │                                                                          │
///      │ SIGTERM/SIGINT: nothing was served yet, exit 0      first SIGTERM/SIGINT │
///      ▼                                                                          ▼
///    exit 0            draining ──every worker drained (or drain_timeout)──▶ exit 0
///                         │
///                         │ second signal: workers close every connection at once
///                         ▼
///                      stopping ──workers joined (at most 1 s)──▶ exit 1
/// ```
public final class Engine {
    /// The version `fulcrum --version`, the status and the metrics show.
    public static let version = "0.1.0"
    public let config: FulcrumConfig
    /// The file SIGHUP re-reads.
    public let configPath: String?
    private var logger: Logger
    /// `--upgrade-from`: the upgrade socket of a running process whose listening sockets to take over.
    public var upgradeFrom: String?

    enum Phase { case starting, serving, draining, stopping }

    /// The signals that stop the engine; held pending from the start (`holdStopSignals`) until the
    /// engine's watchers are installed.
    static let stopSignals = [SIGTERM, SIGINT]
    /// Blocked in worker threads: every signal is the engine thread's to handle.
    static let workerBlockedSignals = [SIGTERM, SIGINT, SIGHUP, SIGUSR1]
    /// After a second signal, how long the workers may take to close everything before the process exits
    /// without them.
    static let forcedStopMicroseconds: Int64 = 1_000_000
    /// How long the start waits for the first round of active checks at most.
    static let firstChecksWaitMicroseconds: Int64 = 2_000_000
    /// What a worker sends the engine when its loop has ended.
    static let workerStopped: UInt8 = 0x66 // "f"
    /// What a worker sends the engine when it has posted a report.
    static let reportPosted: UInt8 = 0x72 // "r"

    public init(config: FulcrumConfig, configPath: String? = nil, logger: Logger) {
        self.config = config
        self.configPath = configPath
        self.logger = logger
    }

    public var workerCount: Int {
        switch config.workers {
        case .auto: return onlineCores()
        case .count(let n): return n
        }
    }

    /// Keeps SIGTERM and SIGINT pending on the calling thread until `run` watches them, so that a signal
    /// that arrives while the configuration is read or the listeners are bound stops Fulcrum like any
    /// other instead of killing it. Call it first thing; `run` calls it too.
    public static func holdStopSignals() {
        SignalWatcher.block(stopSignals + [SIGHUP, SIGUSR1])
    }

    /// Binds, serves until a signal and a drain, and returns the process exit status.
    public func run() throws(SystemError) -> Int32 {
        Engine.holdStopSignals()
        Socket.ignoreSIGPIPE()
        let fileLimit = Socket.raiseFileLimit()
        let workers = workerCount
        let base = EventBase()

        var phase = Phase.starting
        var senders: [WakeupSender] = []
        var checker: HealthChecker?
        var handover: HandoverServer?
        var admin: AdminServer?
        var live: LiveState?
        var reloadPending = false
        var accessLog: AccessLog?
        let forcedStop = Timer(base: base) { base.exit() }
        // The first stop: every worker stops accepting and drains. `stopping` tells a service manager that
        // the service is stopping; not after a takeover, where the service goes on in the new process.
        let drain: (_ why: String, _ stopping: Bool) -> Void = { [logger, config] why, stopping in
            logger.info("\(why)", metadata: [
                "drain_timeout": "\(live?.config.drainTimeout.configText ?? config.drainTimeout.configText)",
            ])
            checker?.stop()
            handover?.close()
            if stopping { ServiceNotify.stopping(logger: logger) }
            if phase == .starting { base.exit() }
            phase = .draining
            for sender in senders { sender.send(WorkerCommand.drain.rawValue) }
        }
        let onSignal: (Int32) -> Void = { [logger] number in
            let name = number == SIGTERM ? "SIGTERM" : "SIGINT"
            switch phase {
            case .starting, .serving:
                drain("\(name) received: stopping", true)
            case .draining:
                logger.warning("second \(name): closing every connection and exiting with status 1")
                phase = .stopping
                for sender in senders { sender.send(WorkerCommand.stop.rawValue) }
                forcedStop.schedule(after: Engine.forcedStopMicroseconds)
            case .stopping:
                break
            }
        }
        // Watch before anything else starts: a signal from here on drains instead of killing.
        var watchers = Engine.stopSignals.map { SignalWatcher(base: base, signal: $0, handler: onSignal) }
        // SIGHUP re-reads the configuration file and applies what changed; it never ends the process.
        watchers.append(SignalWatcher(base: base, signal: SIGHUP) { [logger, configPath] _ in
            guard let configPath else {
                logger.warning("SIGHUP received, but this process has no configuration file to re-read; nothing changed")
                return
            }
            switch phase {
            case .starting:
                logger.info("SIGHUP received while starting: reloading once serving")
                reloadPending = true
            case .serving:
                logger.info("SIGHUP received: reloading the configuration", metadata: ["config": "\(configPath)"])
                live?.reload(path: configPath)
            case .draining, .stopping:
                logger.warning("SIGHUP received while stopping: not reloading")
            }
        })

        // SIGUSR1 reopens the access log file (log rotation).
        watchers.append(SignalWatcher(base: base, signal: SIGUSR1) { _ in accessLog?.reopen() })

        // Every wakeup pipe stays open until every thread that could write to it has been joined.
        let enginePipe = try WakeupPipe()
        var pipes: [WakeupPipe] = []
        for _ in 0..<workers { pipes.append(try WakeupPipe()) }
        senders = pipes.map(\.sender)
        let mailboxes = senders.map { sender in Mailbox<WorkerMessage> { sender.send(WorkerCommand.mail.rawValue) } }
        let engineSender = enginePipe.sender
        let reports = Mailbox<EngineReport> { engineSender.send(Engine.reportPosted) }
        let state = LiveState(config: config, workers: workers, mailboxes: mailboxes, base: base, logger: logger)
        live = state
        let takeover = try upgradeFrom.map { path throws(SystemError) in try Takeover(path: path, logger: logger) }
        try state.bindListeners(takeover: takeover)
        // After a takeover the pid file changes hands only once this process serves: a new process that
        // fails before that leaves the running one's file alone.
        var pidFile: PidFile?
        if takeover == nil {
            do throws(SystemError) {
                pidFile = try config.pidFile.map { path throws(SystemError) in try PidFile.write(path) }
            } catch {
                state.closeListeners()
                throw error
            }
        }
        defer { pidFile?.remove() }
        // The admin API, if configured, serves from the start (status while the first checks run); a token
        // that cannot be read or an address that cannot be bound stops the start.
        let startAdmin = { [logger, configPath] (settings: FulcrumConfig.Admin) throws(SystemError) -> AdminServer in
            let server = try AdminServer(settings: settings, state: state, configPath: configPath, logger: logger)
            server.metrics = { state.metricsText(version: Engine.version, accessLogDropped: accessLog?.droppedLines) }
            server.page = { StatusPage.html }
            server.reload = {
                guard let configPath, phase == .serving else {
                    return .failed(errors: [phase == .serving ? "this process has no configuration file to re-read"
                                                              : "the process is not serving (starting or stopping)"])
                }
                return state.reload(path: configPath)
            }
            return server
        }
        // After a takeover the old process holds the admin address until it has handed over: this one binds
        // it once serving (below).
        if let settings = config.admin, takeover == nil {
            do throws(SystemError) {
                admin = try startAdmin(settings)
            } catch {
                state.closeListeners()
                throw error
            }
        }
        // The closures below and the admin server hold the live state: let go of them when the run ends.
        defer {
            state.onReloaded = nil
            admin?.close()
            admin = nil
        }
        // `admin:` changes with a reload: moved, turned on or off, or a token file read again. Applied once
        // every worker has the reload and 100 ms later, never inside a request of the server it may close: a
        // `POST /reload` is answered on the old address first, and its answer has time to leave.
        var adminWanted: FulcrumConfig.Admin?
        let applyAdmin = Timer(base: base) { [logger] in
            switch (admin, adminWanted) {
            case (let server?, let settings?): server.apply(settings)
            case (let server?, nil):
                server.close()
                admin = nil
            case (nil, let settings?):
                do throws(SystemError) {
                    admin = try startAdmin(settings)
                } catch {
                    logger.error("admin: cannot start the admin API the reload turned on", metadata: ["error": "\(error)"])
                }
            case (nil, nil): break
            }
        }
        state.onReloaded = { new in
            // Every reload (SIGHUP, POST /reload) applies `access_log:` too.
            accessLog?.configure(new.accessLog)
            state.whenApplied(state.generation) {
                adminWanted = new.admin
                applyAdmin.schedule(after: 100_000)
            }
        }
        do throws(SystemError) {
            accessLog = try AccessLog(config.accessLog, logger: logger, blockedSignals: Engine.workerBlockedSignals)
        } catch {
            state.closeListeners()
            throw error
        }
        defer { accessLog?.stop() }
        let seed = UInt64(truncatingIfNeeded: base.monotonicMicroseconds) ^ UInt64(getpid())
        let health = HealthChecker(base: base, seed: seed, logger: logger) { [unowned state] pool, slot, verdict, passed, reason, change in
            state.checked(pool: pool, slot: slot, state: verdict, passed: passed, reason: reason, change: change)
        }
        checker = health
        state.health = health
        let sources = DiscoverySources(base: base, logger: logger)
        state.discovery.factory = { spec, report in sources.make(spec, report: report) }
        state.start()
        defer {
            state.discovery.stop()
            sources.close()
        }

        // Discovered pools learn their backends before any worker starts, so the first clients find them
        // (and the first checks probe them); a registry that does not answer holds the start no longer
        // than the first checks may.
        if !state.discovery.isEmpty {
            var discovered = false
            state.discovery.whenFirstRoundDone {
                discovered = true
                if phase == .starting { base.exit() }
            }
            let longest = Timer(base: base) { if phase == .starting { base.exit() } }
            longest.schedule(after: Engine.firstChecksWaitMicroseconds)
            if !discovered { base.run() }
            longest.cancel()
        }

        // The first round of active checks runs before any worker starts, so that the first clients find
        // the backends that passed already up (each probe is bounded by its check's timeout). Clients that
        // connect meanwhile wait in the listening sockets' queues.
        if health.hasTargets {
            // A probe can finish inside `start` (its socket cannot be created, or its connect fails at
            // once), so the round may be over before the loop runs, when asking it to exit would be lost.
            var firstRoundDone = false
            health.start {
                firstRoundDone = true
                if phase == .starting { base.exit() }
            }
            // A slow or silent backend must not hold every other one back: serve after at most this long,
            // with the backends not checked yet still unknown.
            let longest = Timer(base: base) { if phase == .starting { base.exit() } }
            longest.schedule(after: Engine.firstChecksWaitMicroseconds)
            if !firstRoundDone { base.run() }
            longest.cancel()
        } else {
            health.start()
        }
        if phase != .starting {
            state.closeListeners()
            withExtendedLifetime(watchers) {}
            logger.info("stopped before serving")
            return 0
        }
        phase = .serving
        if takeover != nil { state.joinExtraSockets() }

        var finished = 0
        var done: WakeupReceiver? = WakeupReceiver(base: base, pipe: enginePipe) { byte in
            if byte == Engine.reportPosted {
                reports.drain { state.handle($0) }
                return
            }
            finished += 1
            if finished == workers { base.exit() }
        }
        var threads: [LoopThread] = []
        for id in 0..<workers {
            let plan = WorkerPlan(id: id, bufferSize: config.bufferSize, drainTimeout: config.drainTimeout,
                                  wakeup: pipes[id], allWorkers: senders, engineSender: enginePipe.sender,
                                  mailbox: mailboxes[id], reports: reports, seed: seed, logger: logger,
                                  accessLog: accessLog!)
            threads.append(LoopThread.spawn(name: "fulcrum-w\(id)", blockedSignals: Engine.workerBlockedSignals) {
                let worker = Worker(plan: plan)
                worker.run()
            })
        }
        var ready: Logger.Metadata = [
            "workers": "\(workers)", "event_method": "\(base.method)", "file_limit": "\(fileLimit)",
        ]
        if health.hasTargets { ready["first_checks"] = "\(health.summary)" }
        // The upgrade socket is served before `fulcrum ready` is logged, so a new process started on that
        // line finds it.
        handover = Handover.serving(config: config, takeover: takeover, base: base, sockets: { state.listenerSockets },
                                    logger: logger) {
            guard phase == .serving else { return }
            // The new process serves the admin API from now on, on the same address.
            admin?.close()
            admin = nil
            adminWanted = nil
            drain("upgrade: a new process serves every listener; draining", false)
        }
        // After a takeover: the admin address is free once the old process has closed it, a moment after it
        // confirmed the takeover.
        var adminAttempts = 0
        var bindAdmin: () -> Bool = { true }
        let bindAdminTimer = Timer(base: base) { if !bindAdmin() { adminAttempts = .max } }
        if takeover != nil, let settings = config.admin {
            bindAdmin = { [logger] in
                adminAttempts += 1
                do throws(SystemError) {
                    if admin == nil { admin = try startAdmin(settings) }
                    return true
                } catch {
                    if error.errno == EADDRINUSE && adminAttempts < 60 {
                        bindAdminTimer.schedule(after: 50_000)
                        return true
                    }
                    logger.error("admin: cannot serve the admin API after the takeover", metadata: ["error": "\(error)"])
                    return false
                }
            }
            bindAdminTimer.schedule(after: 0)
        }
        defer { bindAdmin = { true } }
        if takeover != nil, let path = config.pidFile {
            do throws(SystemError) {
                pidFile = try PidFile.write(path)
            } catch {
                logger.error("pid_file: \(error); serving without it", metadata: ["path": "\(path)"])
            }
        }
        logger.info("fulcrum ready", metadata: ready)
        if reloadPending, let configPath {
            reloadPending = false
            state.reload(path: configPath)
        }
        base.run()
        health.stop()

        if phase == .stopping && finished < workers {
            logger.error("workers did not stop in time, exiting without them", metadata: [
                "stopped": "\(finished)", "workers": "\(workers)",
            ])
            return 1
        }
        for thread in threads { thread.join() }
        done = nil
        for pipe in pipes { pipe.close() }
        enginePipe.close()
        admin?.close()
        withExtendedLifetime((done, watchers, forcedStop)) {}
        if phase == .stopping {
            logger.warning("stopped: open connections were closed")
            return 1
        }
        logger.info("stopped: all connections drained")
        return 0
    }
}
