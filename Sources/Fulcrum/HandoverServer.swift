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
/// Only processes of this process's user or root may use it (SO_PEERCRED), at most `Handover.maxPeers` at
/// once; a peer has `Handover.requestTimeout` to ask, and a new process `Handover.readyDeadline` to say
/// `ready` once it has the sockets.
///
/// The descriptors it sends belong to the workers' listeners, which close them only when draining: the
/// engine closes this server before it tells any worker to drain.
final class HandoverServer {
    /// A connected peer: a new process taking over, or `fulcrum upgrade` waiting for the outcome.
    final class Peer {
        let fd: Int32
        /// Its process id, as the kernel recorded it at connect.
        let pid: Int32
        var watcher: ReadWatcher?
        /// Its current deadline: to send a request, then (a taker) to say `ready`.
        var deadline: Timer?

        init(fd: Int32, pid: Int32) {
            self.fd = fd
            self.pid = pid
        }
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
    /// Every process started here that has not ended yet, the one above and any given up on.
    private var children: Set<Int32> = []
    private var reapTimer: Timer?
    /// Gives up on a started binary that has not asked for the sockets within `Handover.readyDeadline`.
    private var spawnDeadline: Timer?
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
        spawnDeadline = Timer(base: base) { [unowned self] in self.spawnTimedOut() }
        logger.info("serving upgrade_socket for binary upgrades", metadata: ["path": "\(path)"])
    }

    deinit { close() }

    /// Stops serving and removes the socket file if it is still this server's. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        acceptWatcher?.cancel()
        reapTimer?.cancel()
        spawnDeadline?.cancel()
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
            guard let pid = admit(fd) else {
                Socket.close(fd)
                continue
            }
            let peer = Peer(fd: fd, pid: pid)
            peers[ObjectIdentifier(peer)] = peer
            peer.watcher = ReadWatcher(base: base, fd: fd) { [unowned self, unowned peer] in self.read(peer) }
            peer.deadline = Timer(base: base) { [unowned self, unowned peer] in self.expired(peer) }
            peer.deadline?.schedule(after: Handover.requestTimeout)
        }
    }

    /// The process id of a new connection's peer, or nil (logged, and told why) when it may not use the
    /// socket: a user other than this process's and root, or one peer too many.
    private func admit(_ fd: Int32) -> Int32? {
        let peer: UnixSocket.PeerCredentials
        do throws(SystemError) {
            peer = try UnixSocket.peerCredentials(fd)
        } catch {
            logger.warning("upgrade_socket: refused a connection whose peer is unknown", metadata: ["error": "\(error)"])
            return nil
        }
        let user = geteuid()
        guard peer.uid == user || peer.uid == 0 else {
            logger.warning("upgrade_socket: refused a connection from another user", metadata: [
                "pid": "\(peer.pid)", "uid": "\(peer.uid)", "allowed_uids": "\(user) and 0",
            ])
            try? Handover.send(fd, ["error", "not permitted: only user \(user) and root may use this upgrade socket"])
            return nil
        }
        guard peers.count < Handover.maxPeers else {
            logger.warning("upgrade_socket: refused a connection: too many are open", metadata: [
                "pid": "\(peer.pid)", "open": "\(peers.count)",
            ])
            try? Handover.send(fd, ["error", "\(Handover.maxPeers) connections to the upgrade socket are open already; try again later"])
            return nil
        }
        return peer.pid
    }

    /// A peer's deadline passed: it sent no request in time, or it has the sockets and did not say
    /// `ready` in time. A taker is given up exactly as one that went away.
    private func expired(_ peer: Peer) {
        if taker === peer {
            logger.warning("upgrade: the new process did not say it was ready in time; dropped it: nothing changed, still serving", metadata: [
                "pid": "\(peer.pid)", "deadline": "\(seconds(Handover.readyDeadline))",
            ])
            if peer.pid == spawnedPID { giveUpOnSpawned("did not say it was ready within \(seconds(Handover.readyDeadline))") }
        } else {
            logger.warning("upgrade_socket: a peer sent no request in time; closed its connection", metadata: [
                "pid": "\(peer.pid)", "timeout": "\(seconds(Handover.requestTimeout))",
            ])
        }
        drop(peer)
    }

    private func seconds(_ microseconds: Int64) -> String {
        microseconds % 1_000_000 == 0 ? "\(microseconds / 1_000_000)s" : "\(microseconds / 1000)ms"
    }

    private func drop(_ peer: Peer) {
        peer.watcher?.cancel()
        peer.watcher = nil
        peer.deadline?.cancel()
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
        peer.deadline?.cancel()
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
        // The pid the request names is the sender's own; the kernel's record of it is used instead.
        guard fields.count == 3, fields[1] == Handover.version, Int32(fields[2]) != nil else {
            refuse(peer, "unsupported takeover request (this process speaks handover version \(Handover.version))")
            return
        }
        if let taker {
            refuse(peer, "another takeover is in progress (process \(taker.pid))")
            return
        }
        let pid = peer.pid
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
        peer.deadline?.schedule(after: Handover.readyDeadline)
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
        spawnDeadline?.cancel()
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
        children.insert(pid)
        requester = peer
        try? Handover.send(peer.fd, ["spawned", "\(pid)"])
        reapTimer?.schedule(after: 100_000)
        spawnDeadline?.schedule(after: Handover.readyDeadline)
    }

    /// A started binary has not asked for the sockets in time: the next upgrade may start. (Once it has
    /// them, its deadline as a taker applies instead.) It is still reaped when it ends.
    private func spawnTimedOut() {
        guard let pid = spawnedPID, taker?.pid != pid else { return }
        logger.warning("upgrade: the new process did not take over in time; nothing changed, still serving", metadata: [
            "pid": "\(pid)", "deadline": "\(seconds(Handover.readyDeadline))",
        ])
        giveUpOnSpawned("did not take over within \(seconds(Handover.readyDeadline))")
    }

    /// Stops waiting for the started binary and tells `fulcrum upgrade` why.
    private func giveUpOnSpawned(_ why: String) {
        guard let pid = spawnedPID else { return }
        spawnedPID = nil
        spawnDeadline?.cancel()
        if let requester {
            try? Handover.send(requester.fd, ["failed", "the new process \(pid) \(why); its log says why"])
            drop(requester)
        }
    }

    /// Reaps the started binaries that have ended; if `fulcrum upgrade` still waits for the one that did,
    /// says how it ended.
    private func checkSpawned() {
        for pid in children {
            guard let how = ChildProcess.ended(pid) else { continue }
            children.remove(pid)
            guard pid == spawnedPID else { continue }
            logger.warning("upgrade: the new process ended before it was ready; nothing changed, still serving", metadata: [
                "pid": "\(pid)", "how": "\(how)",
            ])
            giveUpOnSpawned("\(how) before it was ready")
        }
        if !children.isEmpty { reapTimer?.schedule(after: 100_000) }
    }
}
