import Foundation
import FerryServer
import FerryTestSupport
import Testing

/// Password logins through the machine's real PAM stack, against a user made for the test (needs
/// root to create one and to read /etc/shadow). A failed attempt costs pam_unix's delay (~2 s).
@Suite("PAM password logins (root)", .enabled(if: Environment.isRoot), .serialized)
struct PAMTests {
    private func isDenied(_ result: PAMResult) -> Bool {
        if case .denied(let why) = result { return !why.isEmpty }
        return false
    }

    @Test func rightPasswordWrongPasswordAndUnknownUser() throws {
        try withTestUser { user in
            try user.setPassword("correct horse 7")
            // No /etc/pam.d/ferry on a bare machine: PAM falls back to "other" (common-auth, common-account).
            #expect(PAM.authenticate(service: "ferry", user: user.name, password: "correct horse 7") == .success)
            #expect(PAM.authenticate(service: "other", user: user.name, password: "correct horse 7") == .success)
            #expect(isDenied(PAM.authenticate(service: "ferry", user: user.name, password: "correct horse 8")))
            #expect(isDenied(PAM.authenticate(service: "ferry", user: user.name, password: "")))
            #expect(isDenied(PAM.authenticate(service: "ferry", user: "ferry-no-such-user", password: "correct horse 7")))
            #expect(PAM.authenticate(service: "ferry", user: user.name, password: "correct\u{0}horse") == .unavailable("the service, user name or password contains a NUL byte"))
        }
    }

    @Test func lockedAndExpiredAccountsAreDenied() throws {
        try withTestUser { user in
            try user.setPassword("s3cret-pass")
            try Shell.run(["chage", "-E", "0", user.name])
            let expired = PAM.authenticate(service: "ferry", user: user.name, password: "s3cret-pass")
            #expect(isDenied(expired), "\(expired)")  // the password is right; pam_acct_mgmt says no
            try Shell.run(["chage", "-E", "-1", user.name])
            #expect(PAM.authenticate(service: "ferry", user: user.name, password: "s3cret-pass") == .success)
            try Shell.run(["usermod", "-L", user.name])
            #expect(isDenied(PAM.authenticate(service: "ferry", user: user.name, password: "s3cret-pass")))
        }
    }

    /// Looked at again while a session lasts, from the shadow file (not PAM's account modules,
    /// which pam_faillock would count as a login): expired and locked show, a lifted lock too.
    @Test func theShadowFileSaysWhetherAnAccountExpiredOrWasLocked() throws {
        try withTestUser { user in
            try user.setPassword("s3cret-pass")
            #expect(PAM.shadowState(of: user.name) == PAM.ShadowState(expired: false, locked: false))
            try Shell.run(["chage", "-E", "0", user.name])
            #expect(PAM.shadowState(of: user.name)?.expired == true)
            try Shell.run(["chage", "-E", "-1", user.name])
            #expect(PAM.shadowState(of: user.name)?.expired == false)
            try Shell.run(["usermod", "-L", user.name])
            #expect(PAM.shadowState(of: user.name) == PAM.ShadowState(expired: false, locked: true))
            try Shell.run(["usermod", "-U", user.name])
            #expect(PAM.shadowState(of: user.name)?.locked == false)
            #expect(PAM.shadowState(of: "ferry-no-such-user") == nil)
        }
    }

    @Test func thePackagedServiceFileWorks() throws {
        let packaged = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("packaging/pam.d/ferry").path
        let service = "ferry-test-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.copyItem(atPath: packaged, toPath: "/etc/pam.d/" + service)
        defer { try? FileManager.default.removeItem(atPath: "/etc/pam.d/" + service) }
        try withTestUser { user in
            try user.setPassword("another one")
            #expect(PAM.authenticate(service: service, user: user.name, password: "another one") == .success)
            #expect(isDenied(PAM.authenticate(service: service, user: user.name, password: "another two")))
        }
    }
}
