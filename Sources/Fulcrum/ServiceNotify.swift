import EventLoop
import Glibc
import Logging

/// Tells a service manager (systemd's `Type=notify`) how the process is doing, as `sd_notify` does but
/// without libsystemd: one datagram of `KEY=value` lines to the socket named by `$NOTIFY_SOCKET` (a path,
/// or `@name` for an abstract socket). Without `$NOTIFY_SOCKET` every call does nothing.
///
/// ```text
///   start ──listeners bound, workers running──▶ READY=1
///   takeover (--upgrade-from) ──workers running──▶ MAINPID=<pid> READY=1, then tells the old process
///   SIGTERM/SIGINT or a takeover: drain begins ──▶ STOPPING=1
///   reload ──▶ RELOADING=1 ... READY=1
/// ```
public enum ServiceNotify {
    /// The socket to notify, read once: `$NOTIFY_SOCKET` unless empty.
    public static let socket: String? = {
        guard let value = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        return value
    }()

    /// Sends `lines` (e.g. `["READY=1"]`) as one datagram. A failure is logged, never thrown: the
    /// proxy serves whether or not its manager hears about it.
    public static func send(_ lines: [String], logger: Logger) {
        guard let socket else { return }
        do throws(SystemError) {
            try UnixSocket.sendDatagram(to: socket, payload: Array(lines.joined(separator: "\n").utf8))
        } catch {
            logger.warning("could not notify the service manager", metadata: [
                "notify_socket": "\(socket)", "message": "\(lines.joined(separator: " "))", "error": "\(error)",
            ])
        }
    }

    /// Every listener is bound and every worker runs. After a takeover the new process is the service's
    /// main process from now on: it says so first (`MAINPID=`), then waits (at most 5 s) until the
    /// manager has read that (`BARRIER=1`), so the old process, told to drain only afterwards, never
    /// exits while the manager still takes it for the main process.
    public static func ready(takeover: Bool, logger: Logger) {
        guard socket != nil else { return }
        if takeover {
            send(["MAINPID=\(getpid())", "READY=1"], logger: logger)
            barrier(logger: logger)
        } else {
            send(["READY=1"], logger: logger)
        }
    }

    /// Draining has begun (a stop signal or a takeover).
    public static func stopping(logger: Logger) {
        send(["STOPPING=1"], logger: logger)
    }

    /// A reload begins: call `reloaded` when it has ended, whether or not it changed anything.
    /// `MONOTONIC_USEC` is what systemd 253+ asks for with `Type=notify-reload`; older ones ignore it.
    public static func reloading(logger: Logger) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
        send(["RELOADING=1", "MONOTONIC_USEC=\(microseconds)"], logger: logger)
    }

    /// A reload has ended: the process serves again (with the new or, if the file was invalid, the old
    /// configuration).
    public static func reloaded(logger: Logger) {
        send(["READY=1"], logger: logger)
    }

    /// `sd_notify_barrier`: sends the write end of a pipe with `BARRIER=1`; the manager closes it once it
    /// has processed every earlier message, and the read end then hangs up.
    static func barrier(logger: Logger) {
        guard let socket else { return }
        do throws(SystemError) {
            let ends = try UnixSocket.pipe()
            defer { Socket.close(ends.read) }
            do throws(SystemError) {
                try UnixSocket.sendDatagram(to: socket, payload: Array("BARRIER=1".utf8), descriptors: [ends.write])
            } catch {
                Socket.close(ends.write)
                throw error
            }
            Socket.close(ends.write)
            if !UnixSocket.waitForHangUp(ends.read, timeoutMilliseconds: 5_000) {
                logger.warning("the service manager did not confirm MAINPID within 5s; going on")
            }
        } catch {
            logger.warning("could not notify the service manager", metadata: ["message": "BARRIER=1", "error": "\(error)"])
        }
    }
}
