import EventLoop
import Glibc

/// `fulcrum upgrade`'s side of a binary upgrade (see `Handover`): a connection to the upgrade socket of
/// the running process, which it asks to start the new binary as its own child.
public final class UpgradeRequest {
    /// What `fulcrum upgrade` hears from the running process.
    public enum Event: Sendable {
        case started(pid: Int32)
        case ready(pid: Int32)
    }

    public let path: String
    /// The process serving the socket, as the kernel recorded it (SO_PEERCRED): its command line says how
    /// it was started.
    public let serverPID: Int32
    private let fd: Int32

    /// Connects to the upgrade socket at `path`; every step waits at most `timeoutMicroseconds`.
    public init(path: String, timeoutMicroseconds: Int64) throws(SystemError) {
        self.path = path
        do throws(SystemError) {
            fd = try UnixSocket.connect(path: path, timeoutMicroseconds: timeoutMicroseconds)
        } catch {
            throw SystemError("cannot reach the running process at upgrade_socket \(path): connect", errno: error.errno)
        }
        do throws(SystemError) {
            serverPID = try UnixSocket.peerCredentials(fd).pid
        } catch {
            Socket.close(fd)
            throw error
        }
    }

    deinit { Socket.close(fd) }

    /// Asks the running process to start `arguments` (the new binary's absolute path first, then `run
    /// --config ... --upgrade-from PATH`) as its own child, and waits until that process has taken over
    /// (returns its pid) or has failed (throws, saying why).
    public func start(_ arguments: [String], progress: (Event) -> Void) throws(SystemError) -> Int32 {
        var next = try Handover.ask(fd, ["spawn"] + arguments)
        while true {
            guard let answer = next else {
                throw SystemError("upgrade: the running process closed the connection without an outcome", errno: ECONNRESET)
            }
            for descriptor in answer.descriptors { Socket.close(descriptor) }
            let fields = answer.fields
            switch fields[0] {
            case "spawned":
                progress(.started(pid: Int32(fields.count > 1 ? fields[1] : "") ?? 0))
            case "ready":
                let pid = Int32(fields.count > 1 ? fields[1] : "") ?? 0
                progress(.ready(pid: pid))
                return pid
            case "failed", "error":
                throw SystemError("upgrade failed: \(fields.dropFirst().joined(separator: " "))", errno: ECANCELED)
            default:
                throw SystemError("upgrade: an unexpected answer '\(fields[0])'", errno: EPROTO)
            }
            next = try Handover.receive(fd)
        }
    }
}
