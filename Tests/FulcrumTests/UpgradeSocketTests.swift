import EventLoop
import Foundation
import Fulcrum
import FulcrumTestSupport
import Glibc
import Logging
import Testing

/// Runs a program to completion (at most 20 s: `timeout` ends it) and returns its status and output.
private func runCommand(_ arguments: [String]) throws -> (status: Int32, output: String) {
    try runProgram(URL(fileURLWithPath: "/usr/bin/timeout"), ["20"] + arguments)
}

/// A running fulcrum that serves an upgrade socket, with its echo backend and the directory of the socket.
private struct Upgradable {
    let backend: TestBackend
    let dir: TemporaryDirectory
    let socket: String
    let old: FulcrumProcess

    init(workers: Int = 1, environment: [String: String] = [:], arguments: [String] = []) throws {
        backend = try TestBackend(.echo)
        dir = try TemporaryDirectory()
        socket = dir.url.appendingPathComponent("upgrade.sock").path
        old = try FulcrumProcess(config: upgradeConfig(backend, socket: socket, workers: workers),
                                 environment: environment, arguments: arguments)
    }
}

/// The process ids `fulcrum upgrade` printed as started.
private func startedPIDs(_ output: String) -> [Int32] {
    output.split(separator: "\n").compactMap { line in
        line.hasPrefix("started ") ? line.split(separator: " ").last.flatMap { Int32($0) } : nil
    }
}

extension Integration.UpgradeTests {
    /// The upgrade socket serves this process's user and root only, checked on the connection itself
    /// (SO_PEERCRED), not only through the file's mode: here the file is made world-writable, and a
    /// process of another user is refused and told why, and the running process serves on.
    @Test func peersOfAnotherUserAreRefused() throws {
        guard geteuid() == 0 else {
            print("skipped: the tests do not run as root, so they cannot connect as another user")
            return
        }
        let running = try Upgradable()
        let (socket, old) = (running.socket, running.old)
        #expect(chmod(socket, 0o666) == 0)
        let other = try runCommand(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                    fulcrumExecutable().path, "run", "--config", old.configPath, "--upgrade-from", socket])
        #expect(other.status == 1)
        #expect(other.output.contains("the old process refused: not permitted: only user 0 and root may use this upgrade socket"),
                "\(other.output)")
        let refused = try old.waitForLog(containing: "upgrade_socket: refused a connection from another user")
        #expect(refused.contains("uid=65534"), "\(refused)")
        #expect(old.logCount(containing: "upgrade: sent every listening socket") == 0)
        try oneRequest(port: old.port("front"), "still")
    }

    /// At most 8 connections at once: the ninth is refused and told why; once the others close, the
    /// socket serves again.
    @Test func connectionsBeyondTheCapAreRefused() throws {
        let running = try Upgradable()
        let (socket, old) = (running.socket, running.old)
        var idle: [Int32] = []
        defer { for fd in idle { Socket.close(fd) } }
        for _ in 0..<8 { idle.append(try UnixSocket.connect(path: socket, timeoutMicroseconds: 5_000_000)) }
        let ninth = try UnixSocket.connect(path: socket, timeoutMicroseconds: 5_000_000)
        defer { Socket.close(ninth) }
        let answer = try #require(try UnixSocket.receive(ninth))
        let text = String(decoding: answer.payload, as: UTF8.self)
        #expect(text.contains("8 connections to the upgrade socket are open already; try again later"), "\(text)")
        try old.waitForLog(containing: "upgrade_socket: refused a connection: too many are open")

        for fd in idle { Socket.close(fd) }
        idle = []
        // The old process notices the closed connections between events: retry until it has.
        let deadline = Date().addingTimeInterval(5)
        var takeover: Takeover?
        while takeover == nil {
            do {
                takeover = try Takeover(path: socket, logger: Logger(label: "test"))
            } catch {
                let refused = "\(error)"
                guard refused.contains("open already") && Date() < deadline else { throw error }
                usleep(20_000)
            }
        }
        try old.waitForLog(containing: "upgrade: sent every listening socket")
        takeover = nil
        try old.waitForLog(containing: "went away before it was ready; nothing changed")
    }

    /// A peer that asks nothing is closed after the request timeout; a new process that received the
    /// sockets and neither says `ready` nor goes away is dropped at the ready deadline, as if it had gone
    /// away: the old process serves on and the next takeover is not refused. FULCRUM_TEST_UPGRADE_TIMEOUT_MS
    /// sets both limits to 1 s here (10 s and 60 s otherwise).
    @Test func silentPeersAndATakerThatNeverGetsReadyAreDropped() throws {
        let running = try Upgradable(workers: 2, environment: ["FULCRUM_TEST_UPGRADE_TIMEOUT_MS": "1000"])
        let (dir, socket, old) = (running.dir, running.socket, running.old)
        let silent = try UnixSocket.connect(path: socket, timeoutMicroseconds: 10_000_000)
        defer { Socket.close(silent) }
        #expect(try UnixSocket.receive(silent) == nil, "the old process closes the connection")
        try old.waitForLog(containing: "upgrade_socket: a peer sent no request in time; closed its connection")

        let stuck = try Takeover(path: socket, logger: Logger(label: "test"))
        let dropped = try old.waitForLog(containing: "upgrade: the new process did not say it was ready in time; "
            + "dropped it: nothing changed, still serving")
        #expect(dropped.contains("deadline=1s"), "\(dropped)")
        var next: Takeover? = try Takeover(path: socket, logger: Logger(label: "test"))
        try old.waitForLog(containing: "upgrade: sent every listening socket", count: 2)
        next = nil
        try old.waitForLog(containing: "went away before it was ready; nothing changed")
        withExtendedLifetime((stuck, next)) {}
        for n in 0..<10 { try oneRequest(port: old.port("front"), "old-\(n)", timeout: 3) }
        #expect(old.process.isRunning && old.logCount(containing: "draining") == 0)

        // A binary `fulcrum upgrade` started that never asks for the sockets: the command fails at the
        // deadline, and the next one is not refused as "already starting".
        let hang = try dir.write("hang.sh", "#!/bin/sh\nexec sleep 30\n")
        #expect(chmod(hang, 0o755) == 0)
        var started: [Int32] = []
        defer { for pid in started { kill(pid, SIGKILL) } }
        for _ in 0..<2 {
            let (status, output) = try runFulcrum(["upgrade", "--config", old.configPath, "--binary", hang])
            started += startedPIDs(output)
            #expect(status == 1)
            #expect(output.contains("did not take over within 1s; its log says why"), "\(output)")
        }
        #expect(started.count == 2)
        #expect(old.logCount(containing: "upgrade: the new process did not take over in time; nothing changed, still serving") == 2)
        try oneRequest(port: old.port("front"), "still")
    }

    /// A listener inherits its sockets when the new file writes out the port its `:0` got (the rule a
    /// reload keeps sockets by), and the new file's `backlog` applies to the inherited sockets.
    @Test func aWrittenOutPortInheritsTheSocketsWithTheNewBacklog() throws {
        let running = try Upgradable(workers: 2)
        let (socket, old) = (running.socket, running.old)
        let port = old.port("front")
        let written = upgradeConfig(running.backend, socket: socket, workers: 2)
            .replacingOccurrences(of: "    listen: 127.0.0.1:0\n", with: "    listen: 127.0.0.1:\(port)\n    backlog: 77\n")
        #expect(written.contains("backlog: 77"))
        let new = try FulcrumProcess(config: written, arguments: ["--upgrade-from", socket],
                                     readyLine: "took over every listening socket")
        let listening = try #require(new.log.first { $0.contains("listening on") })
        #expect(listening.contains("inherited_sockets=2 ") && listening.contains("new_sockets=0 "), "\(listening)")
        #expect(try old.waitForExit(timeout: 10) == 0)
        try oneRequest(port: port, "new")
        // ss shows a listening socket's backlog as its Send-Q.
        let (status, output) = try runCommand(["ss", "-Hltn", "sport = :\(port)"])
        #expect(status == 0, "\(output)")
        let backlogs = output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true)[2] }
        #expect(backlogs == ["77", "77"], "\(output)")
    }

    /// `fulcrum upgrade` starts the new process on the running one's own --config path and log level;
    /// given another file than the one running, it refuses and starts nothing.
    @Test func upgradeKeepsTheRunningConfigPathAndLogLevel() throws {
        let running = try Upgradable(arguments: ["--log-level", "debug"])
        let (dir, socket, old) = (running.dir, running.socket, running.old)
        let oldPID = old.process.processIdentifier
        let copy = try dir.write("copy.yaml", try String(contentsOfFile: old.configPath, encoding: .utf8))
        let other = try runFulcrum(["upgrade", "--config", copy])
        #expect(other.status == 1)
        #expect(other.output.contains("not upgrading: process \(oldPID) (serving upgrade_socket \(socket)) was started with "
            + "--config \(old.configPath), which is the file it reads, not \(copy); nothing was started. Run "
            + "`fulcrum upgrade --config \(old.configPath)`, or edit \(old.configPath)"), "\(other.output)")
        #expect(old.logCount(containing: "upgrade: started the new binary") == 0)

        // The same file by another path: the new process gets the running one's path and level.
        let link = dir.url.appendingPathComponent("link.yaml").path
        #expect(symlink(old.configPath, link) == 0)
        let (status, output) = try runFulcrum(["upgrade", "--config", link])
        #expect(status == 0, "\(output)")
        let pid = try #require(startedPIDs(output).first, "\(output)")
        defer { kill(pid, SIGKILL) }
        let cmdline = try String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)
        let arguments = cmdline.split(separator: "\0").map(String.init)
        #expect(Array(arguments.dropFirst()) == ["run", "--config", old.configPath, "--upgrade-from", socket,
                                                 "--log-level", "debug"])
        #expect(try old.waitForExit(timeout: 10) == 0)
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while !processEnded(pid) && Date() < deadline { usleep(20_000) }
        #expect(processEnded(pid))
    }
}
