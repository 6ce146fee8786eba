import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Context switches of every thread of a process so far. An event loop that wakes up and goes back to sleep
/// costs one each time, so the count over an idle stretch is the number of wakeups.
func contextSwitches(of pid: Int32) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    var total = 0
    for task in tasks {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8) else { continue }
        for line in status.split(separator: "\n") where line.contains("ctxt_switches:") {
            total += Int(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) ?? 0
        }
    }
    return total
}

/// CPU time (user and system) a process has used so far, in seconds.
func cpuSeconds(of pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let end = stat.lastIndex(of: ")") else { return 0 }
    // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

extension Integration {
    @Suite(.timeLimit(.minutes(1)))
    struct BreakerRecoveryTests {
        @Test func withoutActiveChecksAFailedTrialEjectsAgainAndTheIdleWorkerSleeps() throws {
            let a = try BackendProcess("a"), c = try BackendProcess("c")
            let resetting = try BackendProcess("r", mode: "reset")
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [127.0.0.1:\(a.port), 127.0.0.1:\(resetting.port), 127.0.0.1:\(c.port)]
                breaker: {consecutive_failures: 3, base_ejection: 1s}
            """)
            let port = proxy.port("front")
            let pid = proxy.process.processIdentifier
            // Round robin sends every third connection to the backend that resets: three failures eject it.
            var sent = 0
            while proxy.logCount(containing: "breaker opened") == 0 && sent < 30 {
                _ = askOnce(port, sent)
                sent += 1
            }
            try proxy.waitForLog(containing: "breaker opened")

            // Idle for 2 s, across the end of the 1 s ejection: the worker wakes up once for it, not every ms.
            let switches = contextSwitches(of: pid), cpu = cpuSeconds(of: pid)
            Thread.sleep(forTimeInterval: 2)
            let idleSwitches = contextSwitches(of: pid) - switches, idleCPU = cpuSeconds(of: pid) - cpu
            let halfOpen = try? proxy.waitForLog(containing: "breaker half-open", timeout: 1)
            #expect(halfOpen != nil, "the ejection (1 s + up to 10%) ended during the 2 s")

            // The next 150 connections: one trial goes to the resetting backend, fails, and ejects it again
            // (for 2 s, longer than these take). Before, it took every third connection from here on.
            var failed = 0
            for i in 0..<150 where askOnce(port, sent + i) == nil { failed += 1 }
            #expect(failed >= 1 && failed <= 3, "\(failed) of 150 connections failed after the ejection ended")
            #expect(proxy.logCount(containing: "breaker opened") >= 2, "ejected again after the failed trial")
            #expect(idleSwitches < 50, "the idle proxy woke up \(idleSwitches) times in 2 s")
            #expect(idleCPU < 0.2, "the idle proxy used \(idleCPU) s of CPU in 2 s")
            print("breaker without checks: \(failed) of 150 failed after the ejection; idle 2 s: \(idleSwitches) wakeups, \(idleCPU) s CPU")
        }
    }
}
