/* hub_select.c — which backend a thread's hub runs, and why.
 *
 * Order of authority: gr_hub_use()/gr_hub_use_ops() on this thread (where
 * gr_hub_use(NULL) asks for the default order, environment or not), then the
 * GREENRING_HUB environment variable, then the default order of
 * gr__builtin_hubs (best first). A name asked for explicitly is never
 * silently replaced: if it is unknown or cannot run, creating the hub fails
 * and says why. In the default order, each backend that is refused leaves
 * one line in gr_hub_why() ("io_uring: io_uring_setup: Operation not
 * permitted"), printed at creation when GREENRING_DEBUG=1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Best first. */
const struct gr_hub_ops *const gr__builtin_hubs[] = {
	&gr__hub_uring_ops,
	&gr__hub_epoll_ops,
	&gr__hub_poll_ops,
	NULL,
};

/* What this thread asked for: nothing (env, then default order), a name's
 * ops, or a third party's ops. `chosen` is set by gr_hub_use*(): from then
 * on GREENRING_HUB no longer applies, so gr_hub_use(NULL) means the default
 * order even where the environment names a hub. */
static __thread const struct gr_hub_ops *chosen_ops;
static __thread bool chosen;
static __thread char why[512];

static void why_append(const char *name, const char *reason)
{
	size_t used = strlen(why);

	snprintf(why + used, sizeof(why) - used, "%s%s: %s", used ? "\n" : "", name, reason);
}

static const struct gr_hub_ops *builtin_by_name(const char *name)
{
	for (size_t i = 0; gr__builtin_hubs[i]; i++) {
		if (strcmp(gr__builtin_hubs[i]->name, name) == 0)
			return gr__builtin_hubs[i];
	}
	return NULL;
}

static void list_names(char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; gr__builtin_hubs[i] && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
					 gr__builtin_hubs[i]->name);
}

static int probe(const struct gr_hub_ops *ops)
{
	char reason[256] = "";
	int r = ops->probe(reason, sizeof(reason));

	if (r < 0)
		why_append(ops->name, reason[0] ? reason : strerror(-r));
	return r;
}

/* io_uring's submission queue: 256 by default; at least two entries, since
 * an operation with a deadline needs two (it and its linked timeout); the
 * kernel takes at most 32768. */
#define URING_ENTRIES_DEFAULT 256
#define URING_ENTRIES_MIN 2
#define URING_ENTRIES_MAX 32768

static struct gr_hub_config hub_config(void)
{
	struct gr_hub_config cfg = { 0 };

	cfg.entries = (unsigned)gr__env_size("GREENRING_URING_ENTRIES", URING_ENTRIES_DEFAULT,
					     URING_ENTRIES_MIN, URING_ENTRIES_MAX, false);
	return cfg;
}

/* Try one backend: probe, init, and install a hub running it. */
static int try_backend(const struct gr_hub_ops *ops, struct gr__hub **out)
{
	int r = probe(ops);

	if (r < 0)
		return r;
	struct gr_hub_config cfg = hub_config();
	void *state = NULL;
	r = ops->init(&state, &cfg);
	if (r < 0) {
		char reason[128];

		gr__why(reason, sizeof(reason), "init", r);
		why_append(ops->name, reason);
		return r;
	}
	struct gr__hub *hub = gr__hub_alloc(ops, state);
	if (!hub) {
		ops->fini(state, 0);
		return -ENOMEM;
	}
	r = gr__hub_install(hub);
	if (r < 0) {
		ops->fini(state, 0);
		free(hub);
		return r;
	}
	*out = hub;
	return 0;
}

/* `asked`: what named the hub explicitly ("GREENRING_HUB", "gr_hub_use"),
 * NULL for the default order. */
static void report(const struct gr__hub *hub, int err, const char *asked)
{
	if (hub && gr__env_flag("GREENRING_DEBUG")) {
		if (asked)
			fprintf(stderr, "greenring: hub %s (chosen by %s)\n", hub->ops->name, asked);
		else
			fprintf(stderr, "greenring: hub %s%s%s\n", hub->ops->name,
				why[0] ? "; refused: " : "", why);
	} else if (!hub && asked) {
		/* Never a silent fallback: the hub named is the hub run, or none. */
		fprintf(stderr, "greenring: the hub chosen by %s cannot run: %s\n", asked,
			why[0] ? why : strerror(-err));
	} else if (!hub) {
		fprintf(stderr, "greenring: no hub can run: %s\n", why[0] ? why : strerror(-err));
	}
}

int gr__hub_create_with(const struct gr_hub_ops *ops, struct gr__hub **out)
{
	struct gr__hub *hub = NULL;
	int r = -ENOTSUP;

	const char *asked = ops ? "the caller" : NULL;

	why[0] = '\0';
	if (!ops && chosen) {
		ops = chosen_ops;
		asked = ops ? "gr_hub_use" : NULL;
	} else if (!ops) {
		const char *env = getenv("GREENRING_HUB");

		if (env && *env) {
			ops = builtin_by_name(env);
			if (!ops) {
				char names[128];

				list_names(names, sizeof(names));
				snprintf(why, sizeof(why), "GREENRING_HUB=%s: no such hub (have: %s)",
					 env, names);
				report(NULL, -ENOENT, NULL);
				return -ENOENT;
			}
			asked = "GREENRING_HUB";
		}
	}
	if (ops) {
		r = try_backend(ops, &hub);
	} else {
		for (size_t i = 0; gr__builtin_hubs[i] && !hub; i++)
			r = try_backend(gr__builtin_hubs[i], &hub);
	}
	report(hub, r, asked);
	if (!hub)
		return r < 0 ? r : -ENOTSUP;
	*out = hub;
	return 0;
}

static int use(const struct gr_hub_ops *ops)
{
	int r = gr__hub_destroy_idle();

	if (r < 0)
		return r;
	why[0] = '\0';
	if (ops && probe(ops) < 0)
		return -ENOTSUP;
	chosen_ops = ops;
	chosen = true;
	return 0;
}

int gr_hub_use(const char *name)
{
	const struct gr_hub_ops *ops = NULL;

	if (name) {
		ops = builtin_by_name(name);
		if (!ops) {
			snprintf(why, sizeof(why), "%s: no such hub", name);
			return -ENOENT;
		}
	}
	return use(ops);
}

int gr_hub_use_ops(const struct gr_hub_ops *ops)
{
	if (!ops || !ops->name || !ops->probe || !ops->init || !ops->fini || !ops->submit ||
	    !ops->cancel || !ops->wait || !ops->wake ||
	    ((ops->caps & GR_HUB_CAP_WAIT_UNTIL) && !ops->wait_until))
		return -EINVAL;
	return use(ops);
}

const char *gr_hub_name(void)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub) {
		errno = -err;
		return NULL;
	}
	return hub->ops->name;
}

const char *gr_hub_why(void)
{
	return why;
}
