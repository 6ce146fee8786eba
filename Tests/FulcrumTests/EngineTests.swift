import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Seconds on the test process's monotonic clock.
private func elapsed(since start: ContinuousClock.Instant) -> Double {
    let duration = ContinuousClock.now - start
    return Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// Runs a command to completion; throws if it fails.
private func runCommand(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw TestSocketError("\(arguments.joined(separator: " ")) exited \(process.terminationStatus)", errno: 0)
    }
}

/// A wall clock a test can step for the fulcrum process it runs, with libfaketime (Debian package
/// `faketime`, installed by `make deps-test`), never by setting the machine's clock.
///
/// By default libfaketime fakes CLOCK_MONOTONIC (and its coarse variant) too, as the faked wall time:
/// a step of the wall clock would then step the monotonic clock as well, which no real clock step does,
/// and libevent's timers, which run on the monotonic clock, would stall for an hour after a step of −1h.
/// `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves the monotonic clocks alone, as a real step of the wall clock
/// (NTP, an operator, a VM resuming) does.
///
/// fulcrum is started through `env`, itself under libfaketime: libfaketime's start-up code creates a
/// shared memory segment and exports its name in `FAKETIME_SHARED` unless it inherited one, and that
/// `setenv` at load time leaves a Swift program without its arguments (it sees none and prints its help).
/// `env` inherits nothing, exports the name, and fulcrum inherits it. The segment is named after the
/// process id (which `exec` keeps), and nothing removes it when fulcrum is killed: `removeSharedMemory`.
private final class SteppableWallClock {
    let directory: TemporaryDirectory
    let file: String
    let environment: [String: String]
    let launcher = ["env"]

    init() throws {
        let candidates = ["x86_64-linux-gnu", "aarch64-linux-gnu"].map { "/usr/lib/\($0)/faketime/libfaketimeMT.so.1" }
        guard let library = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw TestSocketError("libfaketime is not installed: install the Debian package faketime (make deps-test)", errno: 0)
        }
        directory = try TemporaryDirectory()
        file = try directory.write("faketime", "+0\n")
        environment = [
            "LD_PRELOAD": library, "FAKETIME_TIMESTAMP_FILE": file,
            // Read the file on every clock read, so a step takes effect at once.
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        ]
    }

    /// Moves the process's wall clock by `offset` from the real time, e.g. "-1h" or "+1h".
    func step(_ offset: String) throws {
        try "\(offset)\n".write(toFile: file, atomically: true, encoding: .utf8)
    }

    func removeSharedMemory(of process: FulcrumProcess) {
        let pid = process.process.processIdentifier
        unlink("/dev/shm/faketime_shm_\(pid)")
        unlink("/dev/shm/sem.faketime_sem_\(pid)")
    }
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct AcceptBackoffTests {
        /// Out of descriptors, a failed accept leaves the connection queued and the socket readable: a
        /// listener that retries at once spins. It must pause instead, log once per pause, keep the open
        /// connections working, and accept again once descriptors are free.
        @Test func outOfDescriptorsPausesAcceptingInsteadOfSpinning() throws {
            let backend = try TestBackend(.echo)
            // `breaker: off`: a client whose backend socket cannot be created must not eject the backend.
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               extraPool: "    breaker: off\n"),
                                           launcher: ["prlimit", "--nofile=48:48"])
            let port = proxy.port("front")
            // Once a client is served the worker's loop is up and holds every descriptor it keeps.
            let open = try TestSocket.connect(port: port)
            try open.send("before\n")
            #expect(try open.receiveLine() == "before")
            // Every client takes two descriptors (its own and its backend's). With an odd number free, the
            // last accept succeeds and the backend socket fails instead; make the number free even, so that
            // the clients use them up exactly and the next accept is the call that fails. (The limit bounds
            // descriptor numbers: those at 48 and above, inherited, do not count.)
            let used = try proxy.openDescriptors().filter { $0 < 48 }.count
            if (48 - used) % 2 == 1 {
                try runCommand(["prlimit", "--pid", "\(proxy.process.processIdentifier)", "--nofile=47:47"])
            }

            let idle = try (0..<40).map { _ in try TestSocket.connect(port: port) }
            try proxy.waitForLog(containing: "accept failed")
            let cpuBefore = try proxy.cpuSeconds()
            let logBefore = proxy.logBytes
            let window = ContinuousClock.now
            Thread.sleep(forTimeInterval: 2)
            let cpu = try proxy.cpuSeconds() - cpuBefore
            let logged = proxy.logBytes - logBefore
            let seconds = elapsed(since: window)
            print("out of descriptors: \(cpu) s of CPU and \(logged) bytes of log in \(seconds) s")
            #expect(cpu < 0.3, "the worker used \(cpu)s of CPU in \(seconds)s while out of descriptors")
            #expect(logged < 100_000, "\(logged) bytes of log in \(seconds)s")
            #expect(proxy.logCount(containing: "pausing accepts") >= 2)

            // Connections already open keep working.
            try open.send("during\n")
            #expect(try open.receiveLine() == "during")

            // Once the idle clients leave, new clients are served again.
            for socket in idle { socket.close() }
            let late = try TestSocket.connect(port: port, timeout: 5)
            try late.send("after\n")
            #expect(try late.receiveLine() == "after")
            #expect(proxy.process.isRunning)
        }
    }

    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct ClockStepTests {
        /// The wall clock steps back an hour right after the last byte: the idle timeout still fires after
        /// `idle_timeout` (libevent re-reads the wall clock every 5 seconds, so a 7 s timeout is sure to
        /// see the step if deadlines follow the wall clock).
        @Test func idleTimeoutFiresOnTimeAfterTheWallClockStepsBack() throws {
            let clock = try SteppableWallClock()
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               extraPool: "    idle_timeout: 7s\n"),
                                           launcher: clock.launcher, environment: clock.environment)
            defer { clock.removeSharedMemory(of: proxy) }
            let client = try TestSocket.connect(port: proxy.port("front"), timeout: 15)
            try client.send("x\n")
            #expect(try client.receiveLine() == "x")
            let last = ContinuousClock.now
            try clock.step("-1h")
            #expect(try client.receiveAll().isEmpty)
            let idle = elapsed(since: last)
            #expect(idle > 6.5 && idle < 10, "closed after \(idle)s idle, idle_timeout 7s")
            #expect(proxy.logCount(containing: "Too many") == 0)
        }

        /// The wall clock steps forward an hour while three clients keep talking every second (idle
        /// timeout 1.9 s): none is cut early, whenever libevent happens to re-read the wall clock. Each
        /// client's idle check comes 0.9 s after its last byte; the three are a third of a second apart, so
        /// some idle check always falls between a client's last byte and the next re-read. Then they fall
        /// silent and are closed on time.
        @Test func noConnectionIsCutEarlyWhenTheWallClockStepsForward() throws {
            let clock = try SteppableWallClock()
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               extraPool: "    idle_timeout: 1900ms\n"),
                                           launcher: clock.launcher, environment: clock.environment)
            defer { clock.removeSharedMemory(of: proxy) }
            let start = ContinuousClock.now
            var clients: [TestSocket] = []
            var lastSent: [ContinuousClock.Instant] = []
            for i in 0..<3 {
                Thread.sleep(forTimeInterval: max(0, Double(i) / 3 - elapsed(since: start)))
                clients.append(try TestSocket.connect(port: proxy.port("front"), timeout: 10))
                lastSent.append(ContinuousClock.now)
            }
            // Rounds: every client sends and reads its echo once a second, a third of a second apart.
            let rounds = 10
            for round in 0..<rounds {
                if round == 1 { try clock.step("+1h") }
                for (i, client) in clients.enumerated() {
                    let at = Double(round) + 1 + Double(i) / 3
                    Thread.sleep(forTimeInterval: max(0, at - elapsed(since: start)))
                    do {
                        try client.send("r\(round)\n")
                        let echo = try client.receiveLine()
                        #expect(echo == "r\(round)")
                    } catch {
                        Issue.record("client \(i) was cut after \(elapsed(since: lastSent[i]))s idle in round \(round): \(error)")
                        return
                    }
                    lastSent[i] = ContinuousClock.now
                }
            }
            for (i, client) in clients.enumerated() {
                #expect(try client.receiveAll().isEmpty)
                let idle = elapsed(since: lastSent[i])
                #expect(idle > 1.6 && idle < 4.5, "client \(i) closed after \(idle)s idle, idle_timeout 1.9s")
            }
        }
    }

    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct StartupShutdownTests {
        @Test func threeHundredWorkersDrainAndExitZero() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 300),
                                           timeout: 60)
            let client = try TestSocket.connect(port: proxy.port("front"))
            try client.send("x\n")
            #expect(try client.receiveLine() == "x")
            client.close()
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 60) == 0)
            #expect(proxy.process.terminationReason == .exit)
            #expect(proxy.logCount(containing: "worker stopped") == 300)
            #expect(proxy.logCount(containing: "stopped: all connections drained") == 1)
        }

        /// `pid_file` names the running process once its listeners are bound and goes away when it exits; a
        /// second instance that cannot bind leaves it alone.
        @Test func pidFileNamesTheRunningProcessUntilItExits() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let path = dir.url.appendingPathComponent("fulcrum.pid").path
            let config = proxyConfig(backends: [(backend.port, 1)], workers: 1, top: "pid_file: \(path)")
            let proxy = try FulcrumProcess(config: config)
            let pid = proxy.process.processIdentifier
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "\(pid)\n")
            // A second instance on the same address fails to bind and must not take the pid file.
            let port = proxy.port("front")
            let second = try dir.write("second.yaml", config.replacingOccurrences(of: "127.0.0.1:0", with: "127.0.0.1:\(port)"))
            let (status, _) = try runFulcrum(["run", "--config", second])
            #expect(status == 1)
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "\(pid)\n")
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 30) == 0)
            #expect(!FileManager.default.fileExists(atPath: path))
        }

        /// SIGHUP (a service manager's reload, a stray `kill -HUP`) re-reads the file: with the file
        /// unchanged it changes nothing, and it never ends the process or cuts a connection.
        @Test func sighupWithAnUnchangedFileCutsNoConnection() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 2))
            let open = try TestSocket.connect(port: proxy.port("front"))
            try open.send("before\n")
            #expect(try open.receiveLine() == "before")
            proxy.signal(SIGHUP)
            try proxy.waitForLog(containing: "SIGHUP received")
            let reloaded = try proxy.waitForLog(containing: "configuration reloaded")
            #expect(reloaded.contains("changes=0"))
            try proxy.waitForLog(containing: "reload applied by every worker")
            try open.send("after\n")
            #expect(try open.receiveLine() == "after")
            let late = try TestSocket.connect(port: proxy.port("front"))
            try late.send("new\n")
            #expect(try late.receiveLine() == "new")
            #expect(proxy.process.isRunning)
            open.close()
            late.close()
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 30) == 0)
        }

        /// SIGTERM as soon as fulcrum has started (config read, listeners not bound, workers not spawned):
        /// it stops like any drain and exits 0, instead of dying by the signal.
        @Test func sigtermDuringStartupStopsCleanly() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 200),
                                           readyLine: "starting")
            proxy.signal(SIGTERM)
            let status = try proxy.waitForExit(timeout: 30)
            #expect(proxy.process.terminationReason == .exit, "ended by signal \(status)")
            #expect(status == 0)
            #expect(proxy.logCount(containing: "SIGTERM received") == 1)
        }

        /// A second signal during a drain closes every open connection and exits 1 in order: every worker
        /// stops and says so.
        @Test func secondSignalClosesEveryConnectionAndExitsOne() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 4,
                                                               top: "drain_timeout: 1m"))
            let open = try (0..<8).map { _ in try TestSocket.connect(port: proxy.port("front")) }
            for socket in open {
                try socket.send("x\n")
                #expect(try socket.receiveLine() == "x")
            }
            proxy.signal(SIGTERM)
            try proxy.waitForLog(containing: "listeners closed", count: 4)
            let second = ContinuousClock.now
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 5) == 1)
            #expect(elapsed(since: second) < 2)
            #expect(proxy.process.terminationReason == .exit)
            for socket in open { #expect(try socket.receiveAll().isEmpty) }
            #expect(proxy.logCount(containing: "second SIGTERM") == 1)
            #expect(proxy.logCount(containing: "worker stopped") == 4)
            #expect(proxy.logCount(containing: "stopped: open connections were closed") == 1)
        }
    }

    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct AddressClaimTests {
        /// SO_REUSEPORT among one process's own workers must not let a second process share the port.
        @Test func aSecondInstanceOnTheSameAddressExitsOneAndTheFirstKeepsServing() throws {
            let backend = try TestBackend(.greet("first"))
            let first = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)]))
            let port = first.port("front")
            let other = try TestBackend(.greet("second"))
            let second = try FulcrumProcess(config: proxyConfig(backends: [(other.port, 1)]).replacingOccurrences(
                of: "127.0.0.1:0", with: "127.0.0.1:\(port)"), readyLine: nil)
            #expect(try second.waitForExit(timeout: 10) == 1)
            #expect(second.log.contains { $0.contains("bind 127.0.0.1:\(port): Address already in use") },
                    "\(second.log.joined(separator: "\n"))")
            for _ in 0..<20 {
                let client = try TestSocket.connect(port: port)
                #expect(try client.receiveLine() == "first")
            }
        }
    }

    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct FirstHealthRoundTests {
        /// Backends of a checked pool start unknown and take no traffic until a check passes: "fulcrum
        /// ready" comes after the first round of checks, so the first client is served. The checks take
        /// 300 ms here (the backend answers after that long).
        @Test func aClientRightAfterReadyIsServedByACheckedPool() throws {
            let backend = try TestBackend(.named("a"))
            backend.delayMilliseconds = 300
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1, extraPool: """
                health: {check: send_expect, send: "ping", expect: "a:", interval: 10s, timeout: 2s}

            """))
            let client = try TestSocket.connect(port: proxy.port("front"))
            try client.send("hello")
            #expect(String(decoding: try client.receive(), as: UTF8.self) == "a:hello")
            #expect(proxy.log.contains { $0.contains("fulcrum ready") && $0.contains("1 up, 0 down") })
        }

        /// Every backend refuses: the first round still ends, fulcrum becomes ready and says that nothing
        /// is up.
        @Test func aPoolWhoseBackendsAllRefuseStillStarts() throws {
            let refusing = try RefusingPort()
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(refusing.port, 1)], workers: 1, extraPool: """
                health: {check: tcp, interval: 10s, timeout: 2s}

            """), timeout: 10)
            #expect(proxy.log.contains { $0.contains("fulcrum ready") && $0.contains("0 up, 1 down") })
        }

        /// One backend never answers its check (10 s timeout): the start waits 2 s at most, and the backend
        /// that passed serves meanwhile.
        @Test func aSilentBackendDoesNotHoldTheStartBack() throws {
            let good = try TestBackend(.named("a"))
            let silent = try SilentBackend()
            let started = Date()
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(good.port, 1), (silent.port, 1)], workers: 1, extraPool: """
                health: {check: send_expect, send: "ping", expect: "a:", interval: 10s, timeout: 10s}

            """), timeout: 20)
            #expect(Date().timeIntervalSince(started) < 5)
            #expect(proxy.log.contains { $0.contains("fulcrum ready") && $0.contains("1 up, 0 down, 1 not checked yet") })
            let client = try TestSocket.connect(port: proxy.port("front"))
            try client.send("hello")
            #expect(String(decoding: try client.receive(), as: UTF8.self) == "a:hello")
        }
    }
}
