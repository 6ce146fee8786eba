import Foundation
import Fulcrum
import FulcrumTestSupport
import Glibc
import Logging
import Testing

/// A proxy config with an upgrade socket at `socket`.
func upgradeConfig(_ backend: TestBackend, socket: String, workers: Int, extraListener: String = "") -> String {
    proxyConfig(backends: [(backend.port, 1)], workers: workers, top: "upgrade_socket: \(socket)")
        .replacingOccurrences(of: "pools:\n", with: extraListener + "pools:\n")
}

/// One echo round trip on a new connection: a line out, the same line back, then close.
func oneRequest(port: UInt16, _ line: String, timeout: Double = 5) throws {
    let socket = try TestSocket.connect(port: port, timeout: timeout)
    try socket.send(line + "\n")
    let answer = try socket.receiveLine()
    guard answer == line else { throw TestSocketError("sent '\(line)', received '\(answer)'", errno: 0) }
    socket.close()
}

/// Clients that run until stopped: `threads` loops of one request per connection, and `longLived`
/// connections opened at start that each send a request every 50 ms. Every error of either kind
/// (refused, reset, timed out, wrong answer) is recorded.
private final class ClientLoad: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var _shortOK = 0
    private var _longOK = 0
    private var _failures: [String] = []
    private let done = DispatchSemaphore(value: 0)
    private let threads: Int
    private var long: [TestSocket] = []
    private var longStopped = false
    private let longDone = DispatchSemaphore(value: 0)

    var shortOK: Int { lock.withLock { _shortOK } }
    var longOK: Int { lock.withLock { _longOK } }
    var failures: [String] { lock.withLock { _failures } }

    init(port: UInt16, threads: Int, longLived: Int) throws {
        self.threads = threads
        for _ in 0..<longLived { long.append(try TestSocket.connect(port: port)) }
        for t in 0..<threads {
            Thread.detachNewThread { [self] in
                var n = 0
                while !lock.withLock({ stopped }) {
                    n += 1
                    do {
                        try oneRequest(port: port, "s\(t)-\(n)")
                        lock.withLock { _shortOK += 1 }
                    } catch {
                        lock.withLock { _failures.append("short \(t)-\(n): \(error)") }
                    }
                }
                done.signal()
            }
        }
        let sockets = long
        Thread.detachNewThread { [self] in
            var n = 0
            while !lock.withLock({ longStopped }) {
                n += 1
                for (i, socket) in sockets.enumerated() {
                    do {
                        try socket.send("l\(i)-\(n)\n")
                        let answer = try socket.receiveLine()
                        if answer == "l\(i)-\(n)" { lock.withLock { _longOK += 1 } } else {
                            lock.withLock { _failures.append("long \(i): received '\(answer)'") }
                        }
                    } catch {
                        lock.withLock { _failures.append("long \(i)-\(n): \(error)") }
                    }
                }
                usleep(50_000)
            }
            longDone.signal()
        }
    }

    /// Waits until `count` more short requests have succeeded (at most `timeout` seconds).
    func waitForShort(_ count: Int, timeout: Double = 20) throws {
        let target = shortOK + count
        let deadline = Date().addingTimeInterval(timeout)
        while shortOK < target {
            if Date() > deadline { throw TestSocketError("only \(shortOK) of \(target) requests within \(timeout)s", errno: 0) }
            usleep(10_000)
        }
    }

    /// Stops the long-lived connections' requests and closes them.
    func closeLongLived() {
        lock.withLock { longStopped = true }
        longDone.wait()
        for socket in long { socket.close() }
    }

    /// Stops every client and waits for them; idempotent.
    func stop() {
        let first = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        for _ in 0..<threads { done.wait() }
        if !lock.withLock({ longStopped }) { closeLongLived() }
    }
}

/// A datagram socket standing in for systemd's notify socket: collects every message sent to it.
private final class NotifyReceiver: @unchecked Sendable {
    let name: String
    private let fd: Int32
    private let lock = NSCondition()
    private var messages: [String] = []
    private var closed = false

    /// `name` is a path, or `@name` for an abstract socket.
    init(_ name: String) throws {
        self.name = name
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + (abstract ? 0 : 1))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw TestSocketError("bind \(name)") }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !lock.withLock({ closed }) {
                // No control buffer: descriptors sent along (BARRIER=1) are closed by the kernel, which
                // is the answer a barrier waits for.
                let n = recv(fd, &buffer, buffer.count, 0)
                guard n > 0 else { continue }
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                lock.withLock {
                    messages.append(text)
                    lock.broadcast()
                }
            }
            Glibc.close(fd)
            if !abstract { unlink(name) }
        }
    }

    /// Stops receiving (within 100 ms) and closes the socket.
    func close() { lock.withLock { closed = true } }

    var received: [String] { lock.withLock { messages } }

    /// Waits until a message equals `text`; throws after `timeout` seconds.
    func waitFor(_ text: String, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while !messages.contains(text) {
            if !lock.wait(until: deadline) {
                throw TestSocketError("no notification '\(text)' within \(timeout)s; received \(messages)", errno: 0)
            }
        }
    }
}

/// Whether a process has ended (a zombie counts: it no longer serves).
func processEnded(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return true }
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    return stat.components(separatedBy: ") ").last?.hasPrefix("Z") ?? true
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct UpgradeTests {
        /// The binary upgrade under load: clients run throughout (one request per connection in loops, and
        /// long-lived connections sending now and then); a new process with more workers takes the
        /// sockets over; the old one drains and exits 0 once its long-lived connections end; no client
        /// connection fails, is refused or reset at any point, and the new process serves afterwards.
        @Test func binaryUpgradeUnderLoadLosesNoConnection() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 2))
            let port = old.port("front")
            let load = try ClientLoad(port: port, threads: 3, longLived: 3)
            defer { load.stop() }
            try load.waitForShort(150)

            let new = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 3),
                                         arguments: ["--upgrade-from", socket],
                                         readyLine: "took over every listening socket")
            #expect(new.port("front") == port)
            let listening = try #require(new.log.first { $0.contains("listening on") })
            #expect(listening.contains("inherited_sockets=2 ") && listening.contains("new_sockets=0 "), "\(listening)")
            let joined = try #require(new.log.first { $0.contains("more socket(s) to the inherited ones") })
            #expect(joined.contains("new_sockets=1 "), "the third worker's socket is bound just before the workers start: \(joined)")
            try old.waitForLog(containing: "upgrade: the new process is ready")
            try old.waitForLog(containing: "listeners closed", count: 2)
            // The old process drains: its long-lived connections go on working while it does.
            let longBefore = load.longOK
            try load.waitForShort(150)
            #expect(load.longOK > longBefore)
            #expect(old.process.isRunning, "the old process waits for its open connections")

            load.closeLongLived()
            #expect(try old.waitForExit(timeout: 15) == 0)
            #expect(old.logCount(containing: "stopped: all connections drained") == 1)
            // Only the new process is left to serve.
            try load.waitForShort(150)
            load.stop()
            #expect(load.failures.isEmpty, "\(load.failures.count) failed: \(load.failures.prefix(5))")
            #expect(new.process.isRunning)
            print("binary upgrade under load (2 -> 3 workers): \(load.shortOK) one-request connections and \(load.longOK) requests on 3 long-lived connections, \(load.failures.count) failed; the old process exited 0 after draining")
            // The new process serves the upgrade socket for the next upgrade.
            try new.waitForLog(containing: "serving upgrade_socket")
            #expect(FileManager.default.fileExists(atPath: socket))
        }

        /// With the admin API on, a takeover hands it over too: the old process closes it when the new one
        /// is ready, and the new one serves it on the same address.
        @Test func theAdminAPIMovesToTheNewProcess() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            // A fixed admin port: bound for a moment to find a free one, then let go.
            var reserved: RefusingPort? = try RefusingPort()
            let adminPort = reserved!.port
            reserved = nil
            let config = upgradeConfig(backend, socket: socket, workers: 1)
                .replacingOccurrences(of: "listeners:", with: "admin: {listen: 127.0.0.1:\(adminPort)}\nlisteners:")
            let old = try FulcrumProcess(config: config)
            let oldPID = try AdminClient.get(port: adminPort, "/status")["fulcrum"] as? [String: Any]
            #expect(oldPID?["pid"] as? Int == Int(old.process.processIdentifier))
            let new = try FulcrumProcess(config: config, arguments: ["--upgrade-from", socket],
                                         readyLine: "took over every listening socket")
            try new.waitForLog(containing: "admin API on http://127.0.0.1:\(adminPort)/")
            let status = try AdminClient.get(port: adminPort, "/status")
            #expect((status["fulcrum"] as? [String: Any])?["pid"] as? Int == Int(new.process.processIdentifier))
            #expect(try old.waitForExit(timeout: 10) == 0)
            try oneRequest(port: new.port("front"), "after")
        }

        /// A new process with fewer workers takes every socket of the group: one of its workers accepts
        /// on two, so connections that the kernel hashes to the second socket are served too.
        @Test func fewerWorkersTakeEverySocketOfTheGroup() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 2))
            let new = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 1),
                                         arguments: ["--upgrade-from", socket],
                                         readyLine: "took over every listening socket")
            #expect(try old.waitForExit(timeout: 10) == 0)
            // About half of these land on the socket the old process's second worker used.
            for n in 0..<40 { try oneRequest(port: new.port("front"), "after-\(n)", timeout: 3) }
            let listening = try #require(new.log.first { $0.contains("listening on") })
            #expect(listening.contains("inherited_sockets=2 ") && listening.contains("new_sockets=0 "), "\(listening)")
        }

        /// `--upgrade-from` a socket nobody serves: exit 1 with a message naming it; the running process is
        /// not affected.
        @Test func upgradeFromAMissingSocketExitsOneAndTheOldKeepsServing() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 1))
            let missing = dir.url.appendingPathComponent("missing.sock").path
            let (status, output) = try runFulcrum(["run", "--config", old.configPath, "--upgrade-from", missing])
            #expect(status == 1)
            #expect(output.contains("not starting: cannot take over from \(missing): connect: No such file or directory"), "\(output)")
            try oneRequest(port: old.port("front"), "still")
            #expect(old.process.isRunning && FileManager.default.fileExists(atPath: socket))
        }

        /// One takeover at a time; a taker that goes away before `ready` (and a new process that fails after
        /// receiving the sockets) changes nothing: the old process serves on, and a later upgrade works.
        @Test func aTakeoverThatNeverGetsReadyChangesNothing() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 2))
            var first: Takeover? = try Takeover(path: socket, logger: Logger(label: "test"))
            try old.waitForLog(containing: "upgrade: sent every listening socket")
            let dir2 = try TemporaryDirectory()
            let second = try dir2.write("second.yaml", upgradeConfig(backend, socket: socket, workers: 2))
            let busy = try runFulcrum(["run", "--config", second, "--upgrade-from", socket])
            #expect(busy.status == 1)
            #expect(busy.output.contains("another takeover is in progress"), "\(busy.output)")
            first = nil
            try old.waitForLog(containing: "went away before it was ready; nothing changed")
            _ = first

            // A new process that receives the sockets but cannot bind its extra listener exits 1.
            let taken = "  - name: extra\n    listen: 127.0.0.1:\(backend.port)\n    pool: app\n"
            let failing = try dir2.write("failing.yaml", upgradeConfig(backend, socket: socket, workers: 2, extraListener: taken))
            let failed = try runFulcrum(["run", "--config", failing, "--upgrade-from", socket])
            #expect(failed.status == 1)
            #expect(failed.output.contains("bind 127.0.0.1:\(backend.port): Address already in use"), "\(failed.output)")
            try old.waitForLog(containing: "went away before it was ready; nothing changed", count: 2)
            for n in 0..<20 { try oneRequest(port: old.port("front"), "old-\(n)", timeout: 3) }
            #expect(old.logCount(containing: "SIGTERM") == 0)

            let new = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 2),
                                         arguments: ["--upgrade-from", socket],
                                         readyLine: "took over every listening socket")
            #expect(try old.waitForExit(timeout: 10) == 0)
            try oneRequest(port: new.port("front"), "new")
        }

        /// `fulcrum upgrade` has the running process start the new binary as its own child, and reports
        /// once that process serves.
        @Test func upgradeCommandStartsTheNewBinaryFromTheRunningProcess() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 1))
            let (status, output) = try runFulcrum(["upgrade", "--config", old.configPath])
            #expect(status == 0, "\(output)")
            let line = output.split(separator: "\n").first { $0.hasPrefix("upgrade done: process ") }
            let pid = try #require(line.flatMap { Int32($0.split(separator: " ")[3]) }, "\(output)")
            defer { kill(pid, SIGKILL) }
            #expect(try old.waitForExit(timeout: 10) == 0)
            try oneRequest(port: old.port("front"), "served by \(pid)")
            // Its parent has exited: stop it and wait until it has gone.
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while !processEnded(pid) && Date() < deadline { usleep(20_000) }
            #expect(processEnded(pid))

            // Nothing serves that socket now: the command fails clearly.
            let none = try runFulcrum(["upgrade", "--config", old.configPath])
            #expect(none.status == 1)
            #expect(none.output.contains("cannot reach the running process at upgrade_socket \(socket)"), "\(none.output)")
        }

        /// sd_notify, as a service manager hears it on the one socket of a service: READY=1 once serving;
        /// after a takeover the new process names itself the main process, and the old one drains without a
        /// word (a STOPPING=1 from it would make the manager stop the whole service, the new process too);
        /// STOPPING=1 when the service itself stops. An abstract socket here; the other tests use none.
        @Test func serviceManagerHearsReadyTheNewMainPIDAndNoStopFromTheOldProcess() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let socket = dir.url.appendingPathComponent("upgrade.sock").path
            let notify = try NotifyReceiver("@fulcrum-test-notify-\(getpid())")
            defer { notify.close() }
            let old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 1),
                                         environment: ["NOTIFY_SOCKET": notify.name])
            try notify.waitFor("READY=1")
            let new = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: 1),
                                         environment: ["NOTIFY_SOCKET": notify.name],
                                         arguments: ["--upgrade-from", socket],
                                         readyLine: "took over every listening socket")
            let pid = new.process.processIdentifier
            try notify.waitFor("MAINPID=\(pid)\nREADY=1")
            try notify.waitFor("BARRIER=1")
            #expect(try old.waitForExit(timeout: 10) == 0)
            #expect(notify.received == ["READY=1", "MAINPID=\(pid)\nREADY=1", "BARRIER=1"])
            #expect(old.logCount(containing: "upgrade: a new process serves every listener; draining") == 1)
            // The new process, stopped, says so.
            new.signal(SIGTERM)
            #expect(try new.waitForExit(timeout: 10) == 0)
            try notify.waitFor("STOPPING=1")
        }
    }

    @Suite struct SystemdUnitTests {
        /// examples/fulcrum.service passes `systemd-analyze verify` (with its binary path pointed at the
        /// built one, which verify requires to exist).
        @Test func exampleUnitVerifies() throws {
            let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first { FileManager.default.isExecutableFile(atPath: $0) }
            guard let analyze else {
                print("skipped: systemd-analyze is not installed, so examples/fulcrum.service is not verified")
                return
            }
            let root = fulcrumExecutable().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            let unit = try String(contentsOf: root.appendingPathComponent("examples/fulcrum.service"), encoding: .utf8)
            #expect(unit.contains("ExecStart=/usr/local/bin/fulcrum run --config /etc/fulcrum/fulcrum.yaml"))
            #expect(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
            #expect(unit.contains("Type=notify") && unit.contains("NotifyAccess=all"))
            let dir = try TemporaryDirectory()
            let path = try dir.write("fulcrum.service", unit.replacingOccurrences(of: "/usr/local/bin/fulcrum",
                                                                                 with: fulcrumExecutable().path))
            let process = Process()
            process.executableURL = URL(fileURLWithPath: analyze)
            process.arguments = ["verify", path]
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "\(output)")
            #expect(output.isEmpty, "\(output)")
        }
    }
}
