/* PID 1 of the worker containers the harness makes, as Concourse's gdn-init and Guardian's
 * garden-init behave: orphans are reaped at once (SA_NOCLDWAIT), then wait for signals forever. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    action.sa_flags = SA_NOCLDWAIT;
    sigaction(SIGCHLD, &action, NULL);
    for (;;) pause();
}
