import EventLoop
import FulcrumCore
import Glibc
import Logging

/// The old process's side of a binary upgrade (see `Handover`): serves `upgrade_socket` on the engine's
/// main loop, never on a worker, while the engine serves. Hands every listening socket to one new
/// process at a time; once that process says `ready`, removes its socket file, stops, and calls
/// `onTakenOver` (which starts the drain). Also starts a new binary on request (`fulcrum upgrade`), so
/// that the new process is this one's child (in its service's cgroup) and reports how that went.
///
/// The descriptors it sends belong to the workers' listeners, which close them only when draining: the
/// engine closes this server before it tells any worker to drain.
final class HandoverServer {
    /// A connected peer: a new process taking over, or `fulcrum upgrade` waiting for the outcome.
    final class Peer {
        let fd: Int32
        var watcher: ReadWatcher?
        var pid: Int32 = 0

        init(fd: Int32) { self.fd = fd }
    }

    private let base: EventBase
    private let path: String
    /// Every listener running now, with its listening sockets (they change with reloads).
    private let sockets: () -> [(FulcrumConfig.Listener, [Int32])]
    private let logger: Logger
    private let onTakenOver: () -> Void
    private var listenFD: Int32
    /// The socket file's identity, so that only this server's own file is ever removed.
    private var file: (device: UInt, inode: UInt)?
    private var acceptWatcher: ReadWatcher?
    private var peers: [ObjectIdentifier: Peer] = [:]
    /// The new process taking over now, if any: one at a time.
    private var taker: Peer?
    /// The process started for `fulcrum upgrade` until it is ready or has ended (then it is reaped), and
    /// that command's connection while it waits.
    private var spawnedPID: Int32?
    private var requester: Peer?
    private var reapTimer: Timer?
    private var closed = false

    init(base: EventBase, path: String, sockets: @escaping () -> [(FulcrumConfig.Listener, [Int32])], logger: Logger,
         onTakenOver: @escaping () -> Void) throws(SystemError) {
        self.base = base
        self.path = path
        self.sockets = sockets
        self.logger = logger
        self.onTakenOver = onTakenOver
        listenFD = try UnixSocket.listen(path: path)
        var info = stat()
        if stat(path, &info) == 0 { file = (UInt(info.st_dev), UInt(info.st_ino)) }
        acceptWatcher = ReadWatcher(base: base, fd: listenFD) { [unowned self] in self.acceptPeers() }
        reapTimer = Timer(base: base) { [unowned self] in self.checkSpawned() }
        logger.info("serving upgrade_socket for binary upgrades", metadata: ["path": "\(path)"])
    }

    deinit { close() }

    /// Stops serving and removes the socket file if it is still this server's. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        acceptWatcher?.cancel()
        reapTimer?.cancel()
        for peer in peers.values { drop(peer) }
        Socket.close(listenFD)
        var info = stat()
        if let file, stat(path, &info) == 0, UInt(info.st_dev) == file.device, UInt(info.st_ino) == file.inode {
            unlink(path)
        }
    }

    // MARK: - Peers

    private func acceptPeers() {
        while !closed {
            let fd: Int32
            do throws(SystemError) {
                guard let accepted = try UnixSocket.accept(listenFD, timeoutMicroseconds: Handover.serverTimeout) else { return }
                fd = accepted
            } catch {
                logger.warning("upgrade_socket: accept failed", metadata: ["error": "\(error)"])
                return
            }
            let peer = Peer(fd: fd)
            peers[ObjectIdentifier(peer)] = peer
            peer.watcher = ReadWatcher(base: base, fd: fd) { [unowned self, unowned peer] in self.read(peer) }
        }
    }

    private func drop(_ peer: Peer) {
        peer.watcher?.cancel()
        peer.watcher = nil
        Socket.close(peer.fd)
        peers[ObjectIdentifier(peer)] = nil
        if taker === peer { taker = nil }
        if requester === peer { requester = nil }
    }

    private func read(_ peer: Peer) {
        let message: (fields: [String], descriptors: [Int32])?
        do throws(SystemError) {
            message = try Handover.receive(peer.fd)
        } catch {
            logger.warning("upgrade_socket: a peer sent a bad message; closing its connection", metadata: ["error": "\(error)"])
            lost(peer)
            return
        }
        guard let message else {
            lost(peer)
            return
        }
        for descriptor in message.descriptors { Socket.close(descriptor) }
        switch message.fields[0] {
        case "takeover": takeover(peer, message.fields)
        case "ready": ready(peer)
        case "spawn": spawn(peer, Array(message.fields.dropFirst()))
        default:
            refuse(peer, "unknown request '\(message.fields[0])'")
        }
    }

    /// A peer closed its connection (or broke the protocol).
    private func lost(_ peer: Peer) {
        if taker === peer {
            logger.warning("upgrade: the new process went away before it was ready; nothing changed, still serving", metadata: [
                "pid": "\(peer.pid)",
            ])
        }
        drop(peer)
    }

    private func refuse(_ peer: Peer, _ reason: String) {
        logger.warning("upgrade_socket: refused a request", metadata: ["reason": "\(reason)"])
        try? Handover.send(peer.fd, ["error", reason])
        drop(peer)
    }

    // MARK: - Takeover

    private func takeover(_ peer: Peer, _ fields: [String]) {
        guard fields.count == 3, fields[1] == Handover.version, let pid = Int32(fields[2]) else {
            refuse(peer, "unsupported takeover request (this process speaks handover version \(Handover.version))")
            return
        }
        if let taker {
            refuse(peer, "another takeover is in progress (process \(taker.pid))")
            return
        }
        peer.pid = pid
        var fields = ["listeners", Handover.version]
        var descriptors: [Int32] = []
        let listeners = sockets()
        for (listener, fds) in listeners {
            let bound = (try? Socket.localEndpoint(fds[0])).map { "\($0)" } ?? ""
            fields += [listener.name, "\(listener.address)", bound, "\(fds.count)"]
            descriptors += fds
        }
        do throws(SystemError) {
            try Handover.send(peer.fd, fields, descriptors: descriptors)
        } catch {
            logger.warning("upgrade: could not send the listening sockets; still serving", metadata: [
                "pid": "\(pid)", "error": "\(error)",
            ])
            drop(peer)
            return
        }
        taker = peer
        logger.info("upgrade: sent every listening socket to a new process; serving until it is ready", metadata: [
            "pid": "\(pid)", "listeners": "\(listeners.count)", "sockets": "\(descriptors.count)",
        ])
    }

    private func ready(_ peer: Peer) {
        guard taker === peer else {
            refuse(peer, "ready without a takeover")
            return
        }
        let pid = peer.pid
        logger.info("upgrade: the new process is ready", metadata: ["pid": "\(pid)"])
        if let requester { try? Handover.send(requester.fd, ["ready", "\(pid)"]) }
        spawnedPID = nil
        // The file goes before the answer: the new process serves the same path once it has the answer.
        var info = stat()
        if let file, stat(path, &info) == 0, UInt(info.st_dev) == file.device, UInt(info.st_ino) == file.inode {
            unlink(path)
        }
        file = nil
        try? Handover.send(peer.fd, ["draining"])
        close()
        onTakenOver()
    }

    // MARK: - Spawn (`fulcrum upgrade`)

    private func spawn(_ peer: Peer, _ arguments: [String]) {
        guard let program = arguments.first, program.hasPrefix("/") else {
            refuse(peer, "spawn needs the new binary's absolute path")
            return
        }
        if let taker {
            refuse(peer, "another takeover is in progress (process \(taker.pid))")
            return
        }
        if let spawnedPID {
            refuse(peer, "an upgrade is already starting (process \(spawnedPID))")
            return
        }
        let pid: Int32
        do throws(SystemError) {
            pid = try ChildProcess.spawn(arguments)
        } catch {
            refuse(peer, "could not start \(program): \(error)")
            return
        }
        logger.info("upgrade: started the new binary", metadata: [
            "pid": "\(pid)", "command": "\(arguments.joined(separator: " "))",
        ])
        spawnedPID = pid
        requester = peer
        try? Handover.send(peer.fd, ["spawned", "\(pid)"])
        reapTimer?.schedule(after: 100_000)
    }

    /// While a started binary has not taken over: if it has ended, says how to the requester.
    private func checkSpawned() {
        guard let pid = spawnedPID else { return }
        if let how = ChildProcess.ended(pid) {
            logger.warning("upgrade: the new process ended before it was ready; nothing changed, still serving", metadata: [
                "pid": "\(pid)", "how": "\(how)",
            ])
            spawnedPID = nil
            if let requester {
                try? Handover.send(requester.fd, ["failed", "the new process \(pid) \(how) before it was ready; its log says why"])
                drop(requester)
            }
            return
        }
        reapTimer?.schedule(after: 100_000)
    }
}
