import Foundation
import FulcrumTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    /// `fulcrum reload`: validate as `check` does, find the running process, send it SIGHUP.
    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct ReloadCommandTests {
        /// A running `fulcrum run` with one echo backend and a `pid_file` in a temporary directory.
        private func startWithPidFile() throws -> (TestBackend, TemporaryDirectory, String, FulcrumProcess) {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let pidFile = dir.url.appendingPathComponent("fulcrum.pid").path
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               top: "pid_file: \(pidFile)"))
            return (backend, dir, pidFile, proxy)
        }

        @Test func reloadValidatesAndSignalsTheProcessNamedByThePidFile() throws {
            let (backend, dir, pidFile, proxy) = try startWithPidFile()
            defer { withExtendedLifetime(backend) {} }
            let pid = proxy.process.processIdentifier
            let (status, output) = try runFulcrum(["reload", "--config", proxy.configPath])
            #expect(status == 0, "\(output)")
            #expect(output.contains("configuration \(proxy.configPath) is valid"))
            #expect(output.contains("sent SIGHUP to process \(pid) (from pid file \(pidFile))"))
            #expect(output.contains("`configuration reloaded`") && output.contains("`reload failed`"))
            try proxy.waitForLog(containing: "configuration reloaded")
            // Another file than the process runs (it would re-read its own): refused, nothing signalled.
            let other = try dir.write("other.yaml", try String(contentsOfFile: proxy.configPath, encoding: .utf8))
            for found in [["--pid", "\(pid)"], ["--pid-file", pidFile]] {
                let second = try runFulcrum(["reload", "--config", other] + found)
                let origin = found[0] == "--pid" ? "" : " (from pid file \(pidFile))"
                #expect(second.status == 1, "\(second.output)")
                #expect(second.output.contains("fulcrum reload: process \(pid)\(origin) was started with --config "
                    + "\(proxy.configPath), which is the file it reads, not \(other); nothing was signalled. Run "
                    + "`fulcrum reload --config \(proxy.configPath)`, or edit \(proxy.configPath)"), "\(second.output)")
                #expect(!second.output.contains("sent SIGHUP"))
            }
            // The same file by another path is the file it runs.
            let link = dir.url.appendingPathComponent("link.yaml").path
            #expect(symlink(proxy.configPath, link) == 0)
            let third = try runFulcrum(["reload", "--config", link])
            #expect(third.status == 0, "\(third.output)")
            try proxy.waitForLog(containing: "configuration reloaded", count: 2)
            #expect(proxy.logCount(containing: "SIGHUP received") == 2)
        }

        /// An invalid file is reported exactly as `check` reports it, and the process gets no signal: the one
        /// SIGHUP it sees is the valid reload that follows.
        @Test func anInvalidFileIsReportedAsCheckDoesAndNothingIsSignalled() throws {
            let (backend, dir, pidFile, proxy) = try startWithPidFile()
            defer { withExtendedLifetime(backend) {} }
            let bad = try dir.write("bad.yaml", """
            pid_file: \(pidFile)
            listeners:
              - {name: a, listen: 127.0.0.1:0, pool: missing}
            pools:
              app:
                backends: []
            """)
            let check = try runFulcrum(["check", "--config", bad])
            let reload = try runFulcrum(["reload", "--config", bad, "--pid-file", pidFile])
            #expect(reload.status == 1)
            #expect(reload.output == check.output)
            #expect(reload.output.contains("bad.yaml:3: listeners[0].pool: pool 'missing' is not defined"))
            let valid = try runFulcrum(["reload", "--config", proxy.configPath])
            #expect(valid.status == 0, "\(valid.output)")
            try proxy.waitForLog(containing: "configuration reloaded")
            #expect(proxy.logCount(containing: "SIGHUP received") == 1)
        }

        @Test func withoutAProcessToSignalTheErrorNamesTheFix() throws {
            let dir = try TemporaryDirectory()
            let config = proxyConfig(backends: [(9, 1)], workers: 1)
            let noPidFile = try dir.write("plain.yaml", config)
            let none = try runFulcrum(["reload", "--config", noPidFile])
            #expect(none.status == 1)
            #expect(none.output.contains("plain.yaml has no pid_file, so the running process cannot be found; "
                + "pass --pid PID or --pid-file PATH, or add `pid_file: /run/fulcrum/fulcrum.pid` to the file"))

            let missing = dir.url.appendingPathComponent("missing.pid").path
            let withKey = try dir.write("keyed.yaml", proxyConfig(backends: [(9, 1)], workers: 1, top: "pid_file: \(missing)"))
            let absent = try runFulcrum(["reload", "--config", withKey])
            #expect(absent.status == 1)
            #expect(absent.output.contains("cannot read the pid file \(missing) (pid_file): No such file or directory"))

            let junk = try dir.write("junk.pid", "hello\n")
            let garbled = try runFulcrum(["reload", "--config", noPidFile, "--pid-file", junk])
            #expect(garbled.status == 1)
            #expect(garbled.output.contains("the pid file \(junk) (--pid-file) does not hold a process id (it reads 'hello')"))

            // A stale pid file: the process it names has exited and been reaped.
            let exited = Process()
            exited.executableURL = URL(fileURLWithPath: "/bin/true")
            try exited.run()
            exited.waitUntilExit()
            let stale = try dir.write("stale.pid", "\(exited.processIdentifier)\n")
            let gone = try runFulcrum(["reload", "--config", noPidFile, "--pid-file", stale])
            #expect(gone.status == 1)
            #expect(gone.output.contains("no process \(exited.processIdentifier) (from pid file \(stale)): the pid file is stale"))
        }

        /// A pid file whose id now belongs to another program: that program must not get a SIGHUP.
        @Test func aPidFileNamingAnotherProgramIsNotSignalled() throws {
            let dir = try TemporaryDirectory()
            let other = Process()
            other.executableURL = URL(fileURLWithPath: "/bin/sleep")
            other.arguments = ["30"]
            try other.run()
            defer {
                kill(other.processIdentifier, SIGKILL)
                other.waitUntilExit()
            }
            let pidFile = try dir.write("other.pid", "\(other.processIdentifier)\n")
            let config = try dir.write("plain.yaml", proxyConfig(backends: [(9, 1)], workers: 1))
            let (status, output) = try runFulcrum(["reload", "--config", config, "--pid-file", pidFile])
            #expect(status == 1)
            #expect(other.isRunning)
            #expect(output.contains("process \(other.processIdentifier) (from pid file \(pidFile)) is not `fulcrum run` "
                + "(its command line is '/bin/sleep 30'): the pid file is stale; nothing was signalled"))
        }

        /// `check` says which keys a reload cannot change, next to them.
        @Test func checkSaysWhichKeysTakeARestart() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("plan.yaml", proxyConfig(backends: [(9, 1)], workers: 3,
                                                              top: "pid_file: /run/f.pid\nbuffer_size: 64KiB"))
            let (status, output) = try runFulcrum(["check", "--config", path])
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            let note = "(a reload keeps the running value; restart to change)"
            #expect(lines.contains("workers:        3           \(note)"))
            #expect(lines.contains("buffer_size:    64KiB       \(note)"))
            #expect(lines.contains("pid_file:       /run/f.pid  \(note)"))
            #expect(lines.contains("drain_timeout:  30s"))
        }
    }
}
