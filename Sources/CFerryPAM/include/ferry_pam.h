#ifndef FERRY_PAM_H
#define FERRY_PAM_H

#include <stddef.h>

// Checks a user's password with the PAM service `service` (/etc/pam.d/<service>, else
// /etc/pam.d/other): pam_authenticate then pam_acct_mgmt. Every prompt is answered with
// `password`. Returns the PAM status; on failure `message` holds pam_strerror's text, followed by
// the last error a module reported, if one did. `remote_host` (may be NULL) is the client's
// address, given to the modules as PAM_RHOST (pam_access, pam_faillock and the audit log use it).
int ferry_pam_authenticate(const char *service, const char *user, const char *password, const char *remote_host,
                           char *message, size_t message_len);


// The shadow file's word on `user`, read without PAM (whose account modules would count as a
// login: pam_faillock's resets its failure tally): returns 1 and sets `expires` (the day, since
// the epoch, the account expires; -1 never) and `locked` (the password hash starts with "!":
// `passwd -l`), or returns 0 when there is no entry or it cannot be read (not root).
int ferry_shadow_state(const char *user, long *expires, int *locked);

// PAM's status numbers, so Swift never hardcodes one.
extern const int FERRY_PAM_SUCCESS;
extern const int FERRY_PAM_SERVICE_ERR;
extern const int FERRY_PAM_SYSTEM_ERR;
extern const int FERRY_PAM_BUF_ERR;
extern const int FERRY_PAM_ABORT;

#endif
