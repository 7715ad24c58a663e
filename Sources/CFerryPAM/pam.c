#include "ferry_pam.h"

#include <security/pam_appl.h>
#include <shadow.h>
#include <stdlib.h>
#include <string.h>

struct conversation {
    const char *password;
    char module_error[256];
};

static void copy_text(char *to, size_t capacity, const char *from) {
    if (capacity == 0) return;
    strncpy(to, from, capacity - 1);
    to[capacity - 1] = '\0';
}

static void free_replies(struct pam_response *replies, int count) {
    for (int i = 0; i < count; i++) {
        if (replies[i].resp == NULL) continue;
        explicit_bzero(replies[i].resp, strlen(replies[i].resp));
        free(replies[i].resp);
    }
    free(replies);
}

// PAM frees the replies and the strings in them.
static int converse(int count, const struct pam_message **messages, struct pam_response **responses, void *data) {
    struct conversation *conversation = data;
    if (count <= 0 || count > PAM_MAX_NUM_MSG) return PAM_CONV_ERR;
    struct pam_response *replies = calloc((size_t)count, sizeof *replies);
    if (replies == NULL) return PAM_BUF_ERR;
    for (int i = 0; i < count; i++) {
        switch (messages[i]->msg_style) {
        case PAM_PROMPT_ECHO_OFF:
        case PAM_PROMPT_ECHO_ON:
            replies[i].resp = strdup(conversation->password);
            if (replies[i].resp == NULL) {
                free_replies(replies, count);
                return PAM_BUF_ERR;
            }
            break;
        case PAM_ERROR_MSG:
            if (messages[i]->msg != NULL) {
                copy_text(conversation->module_error, sizeof conversation->module_error, messages[i]->msg);
            }
            break;
        case PAM_TEXT_INFO:
            break;
        default:
            free_replies(replies, count);
            return PAM_CONV_ERR;
        }
    }
    *responses = replies;
    return PAM_SUCCESS;
}

int ferry_pam_authenticate(const char *service, const char *user, const char *password, const char *remote_host,
                           char *message, size_t message_len) {
    if (message_len > 0) message[0] = '\0';
    struct conversation conversation = {.password = password, .module_error = ""};
    struct pam_conv conv = {.conv = converse, .appdata_ptr = &conversation};
    pam_handle_t *handle = NULL;
    int status = pam_start(service, user, &conv, &handle);
    if (status != PAM_SUCCESS) {
        copy_text(message, message_len, pam_strerror(handle, status));
        if (handle != NULL) pam_end(handle, status);
        return status;
    }
    if (remote_host != NULL && remote_host[0] != '\0') status = pam_set_item(handle, PAM_RHOST, remote_host);
    if (status == PAM_SUCCESS) status = pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
    if (status == PAM_SUCCESS) status = pam_acct_mgmt(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
    if (status != PAM_SUCCESS) {
        copy_text(message, message_len, pam_strerror(handle, status));
        size_t used = strlen(message);
        if (conversation.module_error[0] != '\0' && used + 2 < message_len) {
            copy_text(message + used, message_len - used, ": ");
            copy_text(message + used + 2, message_len - used - 2, conversation.module_error);
        }
    }
    pam_end(handle, status);
    return status;
}

int ferry_shadow_state(const char *user, long *expires, int *locked) {
    struct spwd entry, *found = NULL;
    char buffer[4096];
    if (getspnam_r(user, &entry, buffer, sizeof buffer, &found) != 0 || found == NULL) return 0;
    *expires = entry.sp_expire;
    *locked = entry.sp_pwdp != NULL && entry.sp_pwdp[0] == '!';
    return 1;
}

const int FERRY_PAM_SUCCESS = PAM_SUCCESS;
const int FERRY_PAM_SERVICE_ERR = PAM_SERVICE_ERR;
const int FERRY_PAM_SYSTEM_ERR = PAM_SYSTEM_ERR;
const int FERRY_PAM_BUF_ERR = PAM_BUF_ERR;
const int FERRY_PAM_ABORT = PAM_ABORT;
