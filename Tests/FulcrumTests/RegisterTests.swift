import FulcrumCore
import FulcrumTestSupport
import Foundation
import Glibc
import Testing

extension Integration {
    /// `fulcrum register` (the real executable) beside a real backend, against a real etcd.
    @Suite(.timeLimit(.minutes(2)))
    struct RegisterTests {
        static let prefix = "/fulcrum/pools/redis/"

        /// Checks the backend with send_expect (it answers "NAME:ping"), every 200ms; lease TTL 2s, etcd's
        /// minimum.
        func sidecar(_ etcd: EtcdProcess, _ backend: BackendProcess, _ extra: [String] = []) throws -> RegisterProcess {
            try RegisterProcess([
                "--etcd", etcd.url, "--prefix", Self.prefix, "--address", "127.0.0.1:\(backend.port)",
                "--check", "send_expect", "--send", "ping\\n", "--expect", "\(backend.name):ping",
                "--interval", "200ms", "--timeout", "500ms", "--rise", "2", "--fall", "2", "--ttl", "2s", "--drain-wait", "1s",
            ] + extra)
        }

        func record(_ port: UInt16, _ state: String = "enabled") -> String {
            #"{"address":"127.0.0.1:\#(port)","weight":1,"priority":0,"state":"\#(state)"}"#
        }

        func lease(_ etcd: EtcdProcess, _ key: String) throws -> Int64 {
            try etcd.read(prefix: Self.prefix).leases[key] ?? 0
        }

        @Test func theKeyLivesUnderALeaseWhileTheCheckPassesAndGoesWhenTheBackendOrTheSidecarDies() throws {
            let etcd = try EtcdProcess()
            let backend = try BackendProcess("b1")
            let key = Self.prefix + "127.0.0.1:\(backend.port)"
            let sidecar = try sidecar(etcd, backend)
            let registered = try etcd.waitFor(prefix: Self.prefix, "registered") { $0[key] != nil }
            #expect(registered == [key: record(backend.port)])
            let first = try lease(etcd, key)
            #expect(first != 0, "the key is attached to a lease")
            #expect(try etcd.leaseTTL(first).map { (1...2).contains($0) } == true, "TTL 2s")
            try sidecar.waitForLog("registered \(key) with lease \(String(UInt64(bitPattern: first), radix: 16)) ttl 2s")
            // Keepalives hold it well past the TTL.
            Thread.sleep(forTimeInterval: 3)
            #expect(try etcd.value(key) == record(backend.port))
            #expect(try lease(etcd, key) == first)

            // The backend dies: two failed checks revoke the lease, long before it would expire.
            backend.kill9()
            let killed = Date()
            try etcd.waitFor(prefix: Self.prefix, "the key removed") { $0[key] == nil }
            let removal = Date().timeIntervalSince(killed)
            #expect(removal < 1.9, "removed by the check (\(removal)s), not by the lease's expiry")
            #expect(try etcd.leaseTTL(first) == nil, "the lease is revoked")
            try sidecar.waitForLog("(fall 2 in a row): removing \(key)")
            try sidecar.waitForLog("\(key) removed: lease \(String(UInt64(bitPattern: first), radix: 16)) revoked")

            // It comes back: registered again, under a new lease.
            try backend.start(port: backend.port)
            try etcd.waitFor(prefix: Self.prefix, "registered again") { $0[key] == record(backend.port) }
            let second = try lease(etcd, key)
            #expect(second != 0 && second != first)
            try sidecar.waitForLog("(rise 2 in a row): registering \(key)")

            // The sidecar dies without a word: the key stays until its lease expires (TTL 2s).
            sidecar.kill9()
            let died = Date()
            #expect(try etcd.value(key) != nil, "still there right after the kill")
            try etcd.waitFor(prefix: Self.prefix, timeout: 6, "the key expired") { $0[key] == nil }
            let expiry = Date().timeIntervalSince(died)
            #expect(expiry > 0.5 && expiry < 3.5, "gone when the lease expired: \(expiry)s after the kill")
        }

        @Test func sigtermSetsStateDrainWaitsThenDeletesTheKeyAndExitsZero() throws {
            let etcd = try EtcdProcess()
            let backend = try BackendProcess("b2")
            let key = Self.prefix + "redis-b2"
            let sidecar = try sidecar(etcd, backend, ["--key", "redis-b2", "--weight", "7", "--priority", "1"])
            let registered = try etcd.waitFor(prefix: Self.prefix, "registered") { $0[key] != nil }
            #expect(registered[key] == #"{"address":"127.0.0.1:\#(backend.port)","weight":7,"priority":1,"state":"enabled"}"#)
            let leaseID = try lease(etcd, key)
            sidecar.signal(SIGTERM)
            try etcd.waitFor(prefix: Self.prefix, "state drain") { $0[key]?.contains(#""state":"drain""#) == true }
            let draining = Date()
            #expect(try lease(etcd, key) == leaseID, "the same lease")
            try etcd.waitFor(prefix: Self.prefix, "the key deleted") { $0[key] == nil }
            let drained = Date().timeIntervalSince(draining)
            #expect(drained > 0.8 && drained < 3, "deleted after --drain-wait 1s: \(drained)s")
            #expect(try sidecar.waitForExit() == 0)
            #expect(try etcd.leaseTTL(leaseID) == nil, "the lease is revoked")
            #expect(sidecar.log.contains("\(key) set to state drain; deleting it in 1s"))
            #expect(sidecar.log.contains("deleted \(key)"))
        }

        @Test func aLeaseEtcdNoLongerHasIsGrantedAgainAndAnEtcdRestartKeepsTheKey() throws {
            let etcd = try EtcdProcess()
            let backend = try BackendProcess("b3")
            let key = Self.prefix + "127.0.0.1:\(backend.port)"
            let sidecar = try sidecar(etcd, backend)
            try etcd.waitFor(prefix: Self.prefix, "registered") { $0[key] != nil }
            let first = try lease(etcd, key)
            // The lease disappears behind the sidecar's back: its next keepalive answers TTL 0.
            try etcd.call(Etcd.leaseRevoke(id: first))
            try sidecar.waitForLog("lease \(String(UInt64(bitPattern: first), radix: 16)) expired in etcd (keepalive answered TTL 0)")
            try etcd.waitFor(prefix: Self.prefix, "registered again") { $0[key] != nil }
            let second = try lease(etcd, key)
            #expect(second != first)

            // etcd restarts: the sidecar says once that it is unreachable, and once that it is back; etcd
            // renews its leases when it starts, so the key never left.
            etcd.stop()
            try sidecar.waitForLog("etcd unreachable at \(etcd.url)")
            try etcd.start()
            try sidecar.waitForLog("etcd at \(etcd.url) answers again")
            #expect(try etcd.value(key) == record(backend.port))
            #expect(try lease(etcd, key) == second)
            Thread.sleep(forTimeInterval: 2.5)
            #expect(try lease(etcd, key) == second, "kept alive after the restart")
            #expect(sidecar.log.components(separatedBy: "etcd unreachable").count == 2, "logged once:\n\(sidecar.log)")
        }

        @Test func aKeyDeletedWhileItsLeaseLivesIsPutAgainUnderThatLeaseWithinAboutOneTTL() throws {
            let etcd = try EtcdProcess()
            let backend = try BackendProcess("b4")
            let key = Self.prefix + "127.0.0.1:\(backend.port)"
            let sidecar = try sidecar(etcd, backend)
            try etcd.waitFor(prefix: Self.prefix, "registered") { $0[key] != nil }
            let leaseID = try lease(etcd, key)
            let leaseText = String(UInt64(bitPattern: leaseID), radix: 16)
            try sidecar.waitForLog("registered \(key) with lease \(leaseText) ttl 2s")

            // An operator deletes the key; the lease lives on, so keepalives alone notice nothing.
            try etcd.delete(key)
            let deleted = Date()
            #expect(try etcd.value(key) == nil)
            try etcd.waitFor(prefix: Self.prefix, timeout: 8, "registered again") { $0[key] == record(backend.port) }
            let back = Date().timeIntervalSince(deleted)
            #expect(back < 4.5, "back within about one TTL (2s) plus a keepalive interval: \(back)s")
            #expect(try lease(etcd, key) == leaseID, "under the same lease")
            #expect(try etcd.leaseTTL(leaseID).map { $0 > 0 } == true, "a live lease")
            try sidecar.waitForLog("key \(key) was deleted; registered again with lease \(leaseText)")

            // Once back, it is not put again: the key keeps its revision over several verifications.
            let revision = try etcd.read(prefix: Self.prefix).revision
            Thread.sleep(forTimeInterval: 2.5)
            #expect(try etcd.read(prefix: Self.prefix).revision == revision, "no put while the key is there")
            #expect(try lease(etcd, key) == leaseID)
            #expect(sidecar.log.components(separatedBy: "was deleted").count == 2, "logged once:\n\(sidecar.log)")
        }

        @Test func invalidArgumentsAreRefusedWithEveryProblemAndItsFix() throws {
            let (status, output) = try runFulcrum(["register", "--etcd", "https://10.0.0.1:2379", "--prefix", "/fulcrum/pools/redis",
                                                   "--address", "redis.internal:6379", "--ttl", "1s", "--check", "send_expect"])
            #expect(status != 0)
            for line in [
                "--etcd https://10.0.0.1:2379: TLS to etcd is not supported yet",
                "--prefix /fulcrum/pools/redis does not end with '/'",
                "--address redis.internal:6379 names the host 'redis.internal'",
                "--ttl 1s is out of range; use a duration from 2s to 24h",
                "--check send_expect needs --expect or --expect-regex",
            ] {
                #expect(output.contains(line), "\(line)\n\(output)")
            }
        }
    }
}
