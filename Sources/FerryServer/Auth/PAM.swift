import CFerryPAM
import Foundation

public enum PAMResult: Sendable, Equatable {
    case success
    /// Wrong password, unknown user, expired or locked account: PAM's words for why.
    case denied(String)
    /// PAM itself could not answer (broken service file, missing module): not the user's fault.
    case unavailable(String)
}

/// Password logins (`[auth] mode = "pam"`).
public enum PAM {
    /// Checks `user`'s password with the PAM service `service`, then that the account may log in.
    /// Blocks: a failed attempt takes as long as the service's failure delay (pam_unix: about two
    /// seconds), so call it off Swift's cooperative pool.
    /// `remoteHost`: the client's address, for the modules (PAM_RHOST).
    public static func authenticate(service: String, user: String, password: String, remoteHost: String? = nil) -> PAMResult {
        guard ![service, user, password, remoteHost ?? ""].contains(where: { $0.utf8.contains(0) }) else {
            return .unavailable("the service, user name or password contains a NUL byte")
        }
        var message = [CChar](repeating: 0, count: 512)
        let status = ferry_pam_authenticate(service, user, password, remoteHost, &message, message.count)
        return result(status, message)
    }

    /// What the shadow file says of an account: expired (`chage -E`), its password locked
    /// (`passwd -l`). Nil where there is no entry or it cannot be read (not root; an account of
    /// the directory service alone). Read directly, not through PAM's account modules, which would
    /// count as a login (pam_faillock's resets its tally of failures on it).
    public struct ShadowState: Sendable, Equatable {
        public var expired: Bool
        public var locked: Bool
        public init(expired: Bool, locked: Bool) {
            self.expired = expired
            self.locked = locked
        }
    }

    public static func shadowState(of user: String, now: Date = Date()) -> ShadowState? {
        guard !user.utf8.contains(0) else { return nil }
        var expires = -1, locked: Int32 = 0
        guard ferry_shadow_state(user, &expires, &locked) == 1 else { return nil }
        let today = Int(now.timeIntervalSince1970 / 86_400)
        return ShadowState(expired: expires >= 0 && today >= expires, locked: locked != 0)
    }

    private static func result(_ status: Int32, _ message: [CChar]) -> PAMResult {
        let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch status {
        case FERRY_PAM_SUCCESS:
            return .success
        case FERRY_PAM_SERVICE_ERR, FERRY_PAM_SYSTEM_ERR, FERRY_PAM_BUF_ERR, FERRY_PAM_ABORT:
            return .unavailable(text)
        default:
            return .denied(text)
        }
    }
}
