
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * What happens inside Redis.  Every script declares its keys and touches
 * one Redis Cluster slot (the "#!lua" form makes Redis check it on a
 * cluster), so a send is several calls: its id and dedup in the
 * sender's slot, then its entry into the inboxes of each slot's users.
 * A script publishes nothing: it returns the route channels, and the
 * worker publishes (sharded on a cluster):
 *
 *     <kind><msg id>\n<origin session>\n<users>\n<data>
 *
 * kind "m": users are "<user> <previous cursor> <cursor> ...", data the
 * stored entry;
 * kind "t": users are "<user> ...", data a packed Frame; kind "x": a kick.
 * A worker that died leaves routes behind: they go when a worker finds
 * its alive key gone (ngx_stream_im_routes.c) and prunes them.
 */


/*
 * Work a client can make one frame cost: a group send stores its entry
 * once per member, at most this many bytes in all.
 */

#define NGX_STREAM_IM_LUA_GROUP_BYTES   "67108864"


#define NGX_STREAM_IM_LUA_NOW                                                 \
    "local function now()\n"                                                  \
    "  local t = redis.call('TIME')\n"                                        \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"    \
    "end\n"


/* the distinct channels of a routes hash but origin's, into out/lists */

#define NGX_STREAM_IM_LUA_ROUTES                                              \
    "local function routes(rk, origin, item, out, lists)\n"                   \
    "  local r = redis.call('HGETALL', rk)\n"                                 \
    "  local seen = {}\n"                                                     \
    "  for i = 1, #r, 2 do\n"                                                 \
    "    local ch = r[i + 1]\n"                                               \
    "    if r[i] ~= origin and not seen[ch] then\n"                           \
    "      seen[ch] = true\n"                                                 \
    "      local l = lists[ch]\n"                                             \
    "      if l == nil then\n"                                                \
    "        l = {}\n"                                                        \
    "        lists[ch] = l\n"                                                 \
    "        out[#out + 1] = ch\n"                                            \
    "      end\n"                                                             \
    "      l[#l + 1] = item\n"                                                \
    "    end\n"                                                               \
    "  end\n"                                                                 \
    "end\n"                                                                   \
    "local function by_channel(reply, out, lists)\n"                          \
    "  for _, ch in ipairs(out) do\n"                                         \
    "    reply[#reply + 1] = ch\n"                                            \
    "    reply[#reply + 1] = table.concat(lists[ch], ' ')\n"                  \
    "  end\n"                                                                 \
    "  return reply\n"                                                        \
    "end\n"


/* the distinct channels of a routes hash */

#define NGX_STREAM_IM_LUA_CHANNELS                                            \
    "local function channels(rk)\n"                                           \
    "  local out, seen = {}, {}\n"                                            \
    "  for _, ch in ipairs(redis.call('HVALS', rk)) do\n"                     \
    "    if not seen[ch] then\n"                                              \
    "      seen[ch] = true\n"                                                 \
    "      out[#out + 1] = ch\n"                                              \
    "    end\n"                                                               \
    "  end\n"                                                                 \
    "  return out\n"                                                          \
    "end\n"


ngx_stream_im_script_t  ngx_stream_im_scripts[] = {

    /*
     * id: KEYS the slot's counter, and the sender's dedup key when the
     * send has a client_msg_id; ARGV: the slot.  A msg_id is the time
     * and the slot's count times 16384 plus the slot: unique, with no
     * key shared by all slots.  Returns {state, msg_id, ts_ms, age ms}:
     * "n" new, "d" a duplicate stored in full, "p" a duplicate whose
     * first try may still be storing, "f" one whose first try failed.
     * The dedup key says "<id> <ms> p" until the worker marks it stored,
     * "<id> <ms>", or failed, "<id> <ms> f".
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_NOW
          "if KEYS[2] then\n"
          "  local prev = redis.call('GET', KEYS[2])\n"
          "  if prev then\n"
          "    local id, ms, p = string.match(prev, '^(%S+) (%d+)(.*)$')\n"
          "    if id == nil then\n"
          "      id, ms, p = prev, string.match(prev, '^(%d+)'), ''\n"
          "    end\n"
          "    ms = tonumber(ms or '0')\n"
          "    p = (p == ' p' or p == ' f') and string.sub(p, 2) or 'd'\n"
          "    return {p, id, ms, now() - ms}\n"
          "  end\n"
          "end\n"
          "local ms = now()\n"
          "local n = redis.call('INCR', KEYS[1]) * 16384 + tonumber(ARGV[1])\n"
          "local id = string.format('%.0f-%.0f', ms, n)\n"
          "if KEYS[2] then\n"
          "  redis.call('SET', KEYS[2],\n"
          "             id .. ' ' .. string.format('%.0f', ms) .. ' p',\n"
          "             'EX', 86400)\n"
          "end\n"
          "return {'n', id, ms, 0}\n"),
      "", 0 },

    /*
     * store: KEYS inbox and routes of each user; ARGV: entry, inbox max,
     * origin session, the users.  Returns {{cursor, previous, ...},
     * channel, "<user> <previous> <cursor> ...", ...}: where the entry
     * went in each inbox and the entry before it there ("0-0": none; ""
     * and "": that inbox refused it, the others have it), and
     * who on each channel (but the origin) gets it live.  Workers publish
     * in any order: the previous cursor tells a receiver whether it has
     * everything before.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_ROUTES
          "local entry, max, origin = ARGV[1], ARGV[2], ARGV[3]\n"
          "local cursors, out, lists = {}, {}, {}\n"
          "for i = 4, #ARGV do\n"
          "  local k = (i - 4) * 2\n"
          "  local last = redis.pcall('XREVRANGE', KEYS[k + 1], '+', '-',\n"
          "                           'COUNT', 1)\n"
          "  local c = last\n"
          "  if not last.err then\n"
          "    c = redis.pcall('XADD', KEYS[k + 1], 'MAXLEN', '~', max,\n"
          "                    '*', 'm', entry)\n"
          "  end\n"
          "  if type(c) == 'table' and c.err then\n"
          "    -- not this inbox (not a stream): the others still\n"
          "    cursors[#cursors + 1] = ''\n"
          "    cursors[#cursors + 1] = ''\n"
          "  else\n"
          "    local p = last[1] and last[1][1] or '0-0'\n"
          "    cursors[#cursors + 1] = c\n"
          "    cursors[#cursors + 1] = p\n"
          "    routes(KEYS[k + 2], origin, ARGV[i] .. ' ' .. p .. ' ' .. c,\n"
          "           out, lists)\n"
          "  end\n"
          "end\n"
          "return by_channel({cursors}, out, lists)\n"),
      "", 1 },

    /*
     * members: KEYS members; ARGV: sender, max members, entry size,
     * "1" for the backend, and for typing the largest group it goes to.
     * Returns the members, or {} for typing in a larger group.
     */

    { ngx_string(
          "#!lua\n"
          "local g = KEYS[1]\n"
          "local n = redis.call('SCARD', g)\n"
          "if ARGV[5] ~= '' and n > tonumber(ARGV[5]) then return {} end\n"
          "if ARGV[4] == '1' then\n"
          "  if n == 0 then\n"
          "    return redis.error_reply('NOT_FOUND no such group')\n"
          "  end\n"
          "elseif redis.call('SISMEMBER', g, ARGV[1]) == 0 then\n"
          "  return redis.error_reply('FORBIDDEN not a member of the group')\n"
          "end\n"
          "if n > tonumber(ARGV[2]) then\n"
          "  return redis.error_reply('TOO_LARGE group over "
                                      "im_group_max_members')\n"
          "end\n"
          "if n * tonumber(ARGV[3]) > " NGX_STREAM_IM_LUA_GROUP_BYTES " then\n"
          "  return redis.error_reply('TOO_LARGE message too large for a "
                                      "group this size')\n"
          "end\n"
          "return redis.call('SMEMBERS', g)\n"),
      "", 0 },

    /*
     * routes: KEYS routes of each user; ARGV: origin session, the users.
     * Returns {channel, "<user> ...", ...}, for typing.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_ROUTES
          "local out, lists = {}, {}\n"
          "for i = 2, #ARGV do\n"
          "  routes(KEYS[i - 1], ARGV[1], ARGV[i], out, lists)\n"
          "end\n"
          "return by_channel({}, out, lists)\n"),
      "", 0 },

    /*
     * login: KEYS routes, cursor, revoked; ARGV: session, channel,
     * device, max sessions, token iat in ms.  Returns {1 (the user's
     * first route) or 2, cursor or "", {other channels}, ms}, {0, "",
     * {other channels}} when full, or {-1, ""} when the token was
     * revoked.  Other channels may be of dead workers: the worker checks.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_NOW
          "local rv = redis.call('GET', KEYS[3])\n"
          "if rv and tonumber(ARGV[5]) < tonumber(rv) then\n"
          "  return {-1, ''}\n"
          "end\n"
          "local r = redis.call('HGETALL', KEYS[1])\n"
          "local others, seen, n = {}, {}, 0\n"
          "for i = 1, #r, 2 do\n"
          "  if r[i] ~= ARGV[1] then\n"
          "    n = n + 1\n"
          "    if not seen[r[i + 1]] then\n"
          "      seen[r[i + 1]] = true\n"
          "      others[#others + 1] = r[i + 1]\n"
          "    end\n"
          "  end\n"
          "end\n"
          "if n >= tonumber(ARGV[4]) then return {0, '', others} end\n"
          "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
          "local cursor = redis.call('HGET', KEYS[2], ARGV[3]) or ''\n"
          "return {n == 0 and 1 or 2, cursor, others, now()}\n"),
      "", 0 },

    /*
     * logout: KEYS routes, seen; ARGV: session, user.  Returns {ms, user}
     * when it was the user's last route (seen then: the worker says
     * offline), or {0, {channels left}}.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_NOW
          NGX_STREAM_IM_LUA_CHANNELS
          "redis.call('HDEL', KEYS[1], ARGV[1])\n"
          "local left = channels(KEYS[1])\n"
          "if #left > 0 then return {0, left} end\n"
          "local ms = now()\n"
          "redis.call('SET', KEYS[2], ms)\n"
          "return {ms, ARGV[2]}\n"),
      "", 0 },

    /*
     * prune: KEYS routes, seen; ARGV: user, channels of dead workers.
     * Removes the user's routes to them; returns {ms, user} when that
     * left none (seen then: the worker says offline), else 0.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_NOW
          "local r = redis.call('HGETALL', KEYS[1])\n"
          "local dead, gone, left = {}, 0, 0\n"
          "for i = 2, #ARGV do dead[ARGV[i]] = true end\n"
          "for i = 1, #r, 2 do\n"
          "  if dead[r[i + 1]] then\n"
          "    redis.call('HDEL', KEYS[1], r[i])\n"
          "    gone = gone + 1\n"
          "  else\n"
          "    left = left + 1\n"
          "  end\n"
          "end\n"
          "if gone == 0 or left > 0 then return 0 end\n"
          "local ms = now()\n"
          "redis.call('SET', KEYS[2], ms)\n"
          "return {ms, ARGV[1]}\n"),
      "", 0 },

    /*
     * reroute: KEYS routes; ARGV: session, channel, user.  The route of
     * a signed-in session, set again after a ready.  Returns {ms, user}
     * when the user had no route (watchers were told offline: online
     * again), else 0.
     */

    { ngx_string(
          "#!lua\n"
          NGX_STREAM_IM_LUA_NOW
          "local n = redis.call('HLEN', KEYS[1])\n"
          "      - redis.call('HEXISTS', KEYS[1], ARGV[1])\n"
          "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
          "if n == 0 then return {now(), ARGV[3]} end\n"
          "return 0\n"),
      "", 0 },

    /*
     * presence: KEYS routes and seen of each user; ARGV: the users.
     * Returns {user, online, last seen ms, ...}: online while the user
     * has a route.
     */

    { ngx_string(
          "#!lua\n"
          "local out = {}\n"
          "for i, u in ipairs(ARGV) do\n"
          "  local online = 0\n"
          "  if redis.call('EXISTS', KEYS[i * 2 - 1]) == 1 then\n"
          "    online = 1\n"
          "  end\n"
          "  local seen = redis.call('GET', KEYS[i * 2])\n"
          "  out[#out + 1] = u\n"
          "  out[#out + 1] = online\n"
          "  out[#out + 1] = tonumber(seen or '0')\n"
          "end\n"
          "return out\n"),
      "", 0 },

    /*
     * range: KEYS inbox; ARGV: from, to ("-", "+" or "(<cursor>"), count,
     * bytes, "1" for newest first.  Returns {more, entry, ...}: at most
     * count entries and, past the first, at most bytes of their data,
     * read a few at a time so that Redis never holds much more.
     */

    { ngx_string(
          "#!lua\n"
          "local key, from, to = KEYS[1], ARGV[1], ARGV[2]\n"
          "local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
          "local rev = ARGV[5] == '1'\n"
          "local out, size, n = {0}, 0, 0\n"
          "while true do\n"
          "  local r\n"
          "  if rev then\n"
          "    r = redis.call('XREVRANGE', key, to, from, 'COUNT', 16)\n"
          "  else\n"
          "    r = redis.call('XRANGE', key, from, to, 'COUNT', 16)\n"
          "  end\n"
          "  for _, e in ipairs(r) do\n"
          "    local len, f = 0, e[2]\n"
          "    for i = 2, #f, 2 do len = len + #f[i] end\n"
          "    if n == count or (n > 0 and size + len > budget) then\n"
          "      out[1] = 1\n"
          "      return out\n"
          "    end\n"
          "    n = n + 1\n"
          "    size = size + len\n"
          "    out[n + 1] = e\n"
          "  end\n"
          "  if #r < 16 then return out end\n"
          "  if rev then to = '(' .. r[#r][1] else from = '(' .. r[#r][1] end\n"
          "end\n"),
      "", 0 },

    /*
     * revoked: KEYS revoked; ARGV: token iat in ms.  Returns 1 when the
     * user's tokens issued before then are refused.
     */

    { ngx_string(
          "#!lua\n"
          "local rv = redis.call('GET', KEYS[1])\n"
          "if rv and tonumber(ARGV[1]) < tonumber(rv) then return 1 end\n"
          "return 0\n"),
      "", 0 },

    /*
     * kick: KEYS routes, revoked; ARGV: device or "" for all, and for a
     * revocation the time in ms before which the user's tokens are
     * refused.  Returns {sessions named, channel, ...}: the worker sends
     * each channel one message
     *
     *     x<code>\n\n<user>\n<device>\n<reason>
     */

    { ngx_string(
          "#!lua\n"
          "if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end\n"
          "local r = redis.call('HGETALL', KEYS[1])\n"
          "local out, seen, n = {0}, {}, 0\n"
          "for i = 1, #r, 2 do\n"
          "  if ARGV[1] == '' or\n"
          "     string.match(r[i], ':([^:]*)$') == ARGV[1] then\n"
          "    n = n + 1\n"
          "    if not seen[r[i + 1]] then\n"
          "      seen[r[i + 1]] = true\n"
          "      out[#out + 1] = r[i + 1]\n"
          "    end\n"
          "  end\n"
          "end\n"
          "out[1] = n\n"
          "return out\n"),
      "", 0 },

    /*
     * devices: KEYS routes and seen of each user; ARGV: the users.
     * Returns {user, online, last seen ms, {device, ...}, ...}.
     */

    { ngx_string(
          "#!lua\n"
          "local out = {}\n"
          "for i, u in ipairs(ARGV) do\n"
          "  local r = redis.call('HKEYS', KEYS[i * 2 - 1])\n"
          "  local devices, seen = {}, {}\n"
          "  for _, s in ipairs(r) do\n"
          "    local d = string.match(s, ':([^:]*)$') or ''\n"
          "    if not seen[d] then\n"
          "      seen[d] = true\n"
          "      devices[#devices + 1] = d\n"
          "    end\n"
          "  end\n"
          "  local last = redis.call('GET', KEYS[i * 2])\n"
          "  out[#out + 1] = u\n"
          "  out[#out + 1] = #devices > 0 and 1 or 0\n"
          "  out[#out + 1] = tonumber(last or '0')\n"
          "  out[#out + 1] = devices\n"
          "end\n"
          "return out\n"),
      "", 0 },

    /*
     * group: KEYS members, meta; ARGV: user, "join" or "leave", max
     * members.  Only groups an admin marked open (meta open 1) are joined
     * by their users; anyone may leave.
     */

    { ngx_string(
          "#!lua\n"
          "local g, meta = KEYS[1], KEYS[2]\n"
          "if ARGV[2] == 'leave' then\n"
          "  if redis.call('SREM', g, ARGV[1]) == 0 then\n"
          "    return redis.error_reply('NOT_FOUND not a member')\n"
          "  end\n"
          "  return 1\n"
          "end\n"
          "if redis.call('SISMEMBER', g, ARGV[1]) == 1 then return 1 end\n"
          "if redis.call('HGET', meta, 'open') ~= '1' then\n"
          "  if redis.call('EXISTS', g, meta) == 0 then\n"
          "    return redis.error_reply('NOT_FOUND no such group')\n"
          "  end\n"
          "  return redis.error_reply('FORBIDDEN the group is closed')\n"
          "end\n"
          "if redis.call('SCARD', g) >= tonumber(ARGV[3]) then\n"
          "  return redis.error_reply('TOO_LARGE the group is full')\n"
          "end\n"
          "redis.call('SADD', g, ARGV[1])\n"
          "return 1\n"),
      "", 0 },

    /*
     * admin group: KEYS members, meta; ARGV: "put" open | "delete" |
     * "get" | "members" max, count to add, user to add..., to remove...
     * A group exists while it has members or meta.  put returns 1 when it
     * created the group; delete how many keys went; get {open, member,
     * ...}; members {added, removed, size}, all or nothing.
     */

    { ngx_string(
          "#!lua\n"
          "local g, meta, op = KEYS[1], KEYS[2], ARGV[1]\n"
          "local exists = redis.call('EXISTS', g, meta) > 0\n"
          "if op == 'put' then\n"
          "  redis.call('HSET', meta, 'open', ARGV[2])\n"
          "  return exists and 0 or 1\n"
          "end\n"
          "if op == 'delete' then return redis.call('DEL', g, meta) end\n"
          "if not exists then\n"
          "  return redis.error_reply('NOT_FOUND no such group')\n"
          "end\n"
          "if op == 'get' then\n"
          "  local out = {redis.call('HGET', meta, 'open') == '1' and 1 or 0}\n"
          "  for _, m in ipairs(redis.call('SMEMBERS', g)) do\n"
          "    out[#out + 1] = m\n"
          "  end\n"
          "  return out\n"
          "end\n"
          "local max, nadd = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
          "local add, del, new = {}, {}, {}\n"
          "for i = 4, 3 + nadd do add[#add + 1] = ARGV[i] end\n"
          "for i = 4 + nadd, #ARGV do del[#del + 1] = ARGV[i] end\n"
          "local gone = {}\n"
          "local size = redis.call('SCARD', g)\n"
          "for _, u in ipairs(del) do\n"
          "  if not gone[u] then\n"
          "    gone[u] = true\n"
          "    size = size - redis.call('SISMEMBER', g, u)\n"
          "  end\n"
          "end\n"
          "for _, u in ipairs(add) do\n"
          "  if not new[u] and (gone[u]\n"
          "                     or redis.call('SISMEMBER', g, u) == 0) then\n"
          "    new[u] = true\n"
          "    size = size + 1\n"
          "  end\n"
          "end\n"
          "if size > max then\n"
          "  return redis.error_reply('CONFLICT the group would have more '\n"
          "                           .. 'than im_group_max_members')\n"
          "end\n"
          "local function apply(cmd, l)\n"
          "  local n = 0\n"
          "  for i = 1, #l, 1000 do\n"
          "    local j = math.min(i + 999, #l)\n"
          "    n = n + redis.call(cmd, g, unpack(l, i, j))\n"
          "  end\n"
          "  return n\n"
          "end\n"
          "local removed = apply('SREM', del)\n"
          "return {apply('SADD', add), removed, redis.call('SCARD', g)}\n"),
      "", 0 }
};
