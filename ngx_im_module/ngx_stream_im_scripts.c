
/*
 * Copyright (C) ngx_im authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>

#include "ngx_stream_im.h"


/*
 * What happens inside Redis, one round trip each.  A message is stored
 * in every recipient's inbox under one stream id, made of the time and a
 * global counter (im:seq), or past the last id of them all when an inbox
 * is ahead of the clock, so a message has the same msg_id everywhere;
 * then each distinct live route, but the sending session's, gets one
 * PUBLISH:
 *
 *     <kind><msg id>\n<origin session>\n<user> <user>...\n<data>
 *
 * kind "m": data is the stored entry; kind "t": data is a packed Frame.
 * A route counts while its worker's alive key exists; dead ones go.
 */


/*
 * Work a client can make one frame cost: a group send stores its entry
 * once per member, at most this many bytes in all; typing goes to groups
 * of at most this many members, each one's routes read.
 */

#define NGX_STREAM_IM_LUA_GROUP_BYTES   "67108864"
#define NGX_STREAM_IM_LUA_TYPING_MAX    "1000"


#define NGX_STREAM_IM_LUA_ROUTES                                              \
    "local function routes(users, origin, alive, out)\n"                      \
    "  for _, u in ipairs(users) do\n"                                        \
    "    local rk = 'im:{u:' .. u .. '}:routes'\n"                            \
    "    local r = redis.call('HGETALL', rk)\n"                               \
    "    for i = 1, #r, 2 do\n"                                               \
    "      local ch = r[i + 1]\n"                                             \
    "      if alive[ch] == nil then\n"                                        \
    "        alive[ch] = redis.call('EXISTS', ch .. ':alive')\n"              \
    "      end\n"                                                             \
    "      if r[i] == origin then\n"                                          \
    "        -- the sending session has its SendAck\n"                        \
    "      elseif alive[ch] == 1 then\n"                                      \
    "        local l = out[ch]\n"                                             \
    "        if l == nil then l = {seen = {}}; out[ch] = l end\n"             \
    "        if not l.seen[u] then\n"                                         \
    "          l.seen[u] = true\n"                                            \
    "          l[#l + 1] = u\n"                                               \
    "        end\n"                                                           \
    "      else\n"                                                            \
    "        redis.call('HDEL', rk, r[i])\n"                                  \
    "      end\n"                                                             \
    "    end\n"                                                               \
    "  end\n"                                                                 \
    "end\n"                                                                   \
    "local function members(kind, target, sender, max, size, backend)\n"      \
    "  if kind ~= 'g' then return {target} end\n"                             \
    "  local g = 'im:{g:' .. target .. '}:members'\n"                         \
    "  local n = redis.call('SCARD', g)\n"                                    \
    "  if backend then\n"                                                     \
    "    if n == 0 then\n"                                                    \
    "      return redis.error_reply('NOT_FOUND no such group')\n"             \
    "    end\n"                                                               \
    "  elseif redis.call('SISMEMBER', g, sender) == 0 then\n"                 \
    "    return redis.error_reply('FORBIDDEN not a member of the group')\n"   \
    "  end\n"                                                                 \
    "  if n > tonumber(max) then\n"                                           \
    "    return redis.error_reply('TOO_LARGE group over "                     \
                                    "im_group_max_members')\n"                \
    "  end\n"                                                                 \
    "  if n * size > " NGX_STREAM_IM_LUA_GROUP_BYTES " then\n"                \
    "    return redis.error_reply('TOO_LARGE message too large for a "        \
                                    "group this size')\n"                     \
    "  end\n"                                                                 \
    "  return redis.call('SMEMBERS', g)\n"                                    \
    "end\n"


/* the live routes of a user (dead ones go), and the time in ms */

#define NGX_STREAM_IM_LUA_LIVE                                                \
    "local function live(rk)\n"                                               \
    "  local r = redis.call('HGETALL', rk)\n"                                 \
    "  local alive, n = {}, 0\n"                                              \
    "  for i = 1, #r, 2 do\n"                                                 \
    "    local ch = r[i + 1]\n"                                               \
    "    if alive[ch] == nil then\n"                                          \
    "      alive[ch] = redis.call('EXISTS', ch .. ':alive')\n"                \
    "    end\n"                                                               \
    "    if alive[ch] == 1 then n = n + 1\n"                                  \
    "    else redis.call('HDEL', rk, r[i]) end\n"                             \
    "  end\n"                                                                 \
    "  return n\n"                                                            \
    "end\n"                                                                   \
    "local function now()\n"                                                  \
    "  local t = redis.call('TIME')\n"                                        \
    "  return string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))\n" \
    "end\n"


ngx_stream_im_script_t  ngx_stream_im_scripts[] = {

    /*
     * send: KEYS none (per-user keys are derived); ARGV: entry, inbox
     * max, sender, origin session, client_msg_id, kind "u" or "g",
     * target, group max, "1" from the backend (no membership needed, no
     * copy for the sender, who has no devices).  Returns {msg_id,
     * client_msg_id, bytes a group send stored} ({msg_id, client_msg_id}
     * for a duplicate).  Its reply waits for im_redis_wait replicas.
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_ROUTES
          "local entry, sender, cmid = ARGV[1], ARGV[3], ARGV[5]\n"
          "local backend = ARGV[9] == '1'\n"
          "local users = members(ARGV[6], ARGV[7], sender, ARGV[8], #entry,\n"
          "                      backend)\n"
          "if users.err then return users end\n"
          "if ARGV[6] ~= 'g' and ARGV[7] ~= sender and not backend then\n"
          "  users[2] = sender\n"
          "end\n"
          "local t = redis.call('TIME')\n"
          "local ms = tonumber(t[1]) * 1000 + math.floor(t[2] / 1000)\n"
          "local id = string.format('%.0f-%.0f', ms,\n"
          "                         redis.call('INCR', 'im:seq'))\n"
          "local dedup\n"
          "if cmid ~= '' then\n"
          "  dedup = 'im:{u:' .. sender .. '}:dedup:' .. cmid\n"
          "  local prev = redis.call('SET', dedup, id, 'NX', 'GET',\n"
          "                          'EX', 86400)\n"
          "  if prev then return {prev, cmid} end\n"
          "end\n"
          "local function store(id)\n"
          "  for n, u in ipairs(users) do\n"
          "    local inbox = 'im:{u:' .. u .. '}:inbox'\n"
          "    local r = redis.pcall('XADD', inbox, 'MAXLEN', '~', ARGV[2],\n"
          "                          id, 'm', entry)\n"
          "    if type(r) == 'table' and r.err then\n"
          "      for k = 1, n - 1 do\n"
          "        redis.call('XDEL', 'im:{u:' .. users[k] .. '}:inbox', id)\n"
          "      end\n"
          "      return false\n"
          "    end\n"
          "  end\n"
          "  return true\n"
          "end\n"
          "if not store(id) then\n"
          "  -- an inbox is ahead of the clock: go past the last of them all\n"
          "  local seq = 0\n"
          "  for _, u in ipairs(users) do\n"
          "    local ok, info = pcall(redis.call, 'XINFO', 'STREAM',\n"
          "                           'im:{u:' .. u .. '}:inbox')\n"
          "    for i = 1, ok and #info or 0, 2 do\n"
          "      if info[i] == 'last-generated-id' then\n"
          "        local a, b = string.match(info[i + 1], '^(%d+)-(%d+)$')\n"
          "        a, b = tonumber(a), tonumber(b)\n"
          "        if a > ms or (a == ms and b >= seq) then\n"
          "          ms, seq = a, b + 1\n"
          "        end\n"
          "      end\n"
          "    end\n"
          "  end\n"
          "  id = string.format('%.0f-%.0f', ms, seq)\n"
          "  if not store(id) then\n"
          "    if dedup then redis.call('DEL', dedup) end\n"
          "    return redis.error_reply('ERR the message was not stored')\n"
          "  end\n"
          "  if dedup then redis.call('SET', dedup, id, 'EX', 86400) end\n"
          "end\n"
          "local out = {}\n"
          "routes(users, ARGV[4], {}, out)\n"
          "for ch, l in pairs(out) do\n"
          "  redis.call('PUBLISH', ch, 'm' .. id .. '\\n' .. ARGV[4] .. '\\n'\n"
          "             .. table.concat(l, ' ') .. '\\n' .. entry)\n"
          "end\n"
          "if ARGV[6] ~= 'g' then return {id, cmid, 0} end\n"
          "return {id, cmid, #users * #entry}\n"),
      "", 1 },

    /*
     * login: KEYS routes, cursor, revoked; ARGV: session, channel,
     * device, max sessions, user, token iat in ms.  Returns {1, cursor or
     * ""}, {0, ""} when full, or {-1, ""} when the token was revoked; the
     * first session of a user tells the watchers it is online.
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_LIVE
          "local rv = redis.call('GET', KEYS[3])\n"
          "if rv and tonumber(ARGV[6]) < tonumber(rv) then\n"
          "  return {-1, ''}\n"
          "end\n"
          "local n = live(KEYS[1])\n"
          "if n >= tonumber(ARGV[4]) then return {0, ''} end\n"
          "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
          "if n == 0 then\n"
          "  redis.call('PUBLISH', 'im:presence:' .. ARGV[5], '1 ' .. now())\n"
          "end\n"
          "return {1, redis.call('HGET', KEYS[2], ARGV[3]) or ''}\n"),
      "", 0 },

    /*
     * typing: ARGV: sender, kind, target, packed Frame, group max,
     * origin session.  Published to the live routes only, never stored.
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_ROUTES
          "local sender = ARGV[1]\n"
          "if ARGV[2] == 'g' and redis.call('SCARD', 'im:{g:' .. ARGV[3]\n"
          "   .. '}:members') > " NGX_STREAM_IM_LUA_TYPING_MAX " then\n"
          "  return 0\n"
          "end\n"
          "local users = members(ARGV[2], ARGV[3], sender, ARGV[5], 0)\n"
          "if users.err then return users end\n"
          "local others = {}\n"
          "for _, u in ipairs(users) do\n"
          "  if u ~= sender then others[#others + 1] = u end\n"
          "end\n"
          "local out = {}\n"
          "routes(others, ARGV[6], {}, out)\n"
          "for ch, l in pairs(out) do\n"
          "  redis.call('PUBLISH', ch, 't\\n' .. ARGV[6] .. '\\n'\n"
          "             .. table.concat(l, ' ') .. '\\n' .. ARGV[4])\n"
          "end\n"
          "return 1\n"),
      "", 0 },

    /*
     * group: ARGV: group, user, "join" or "leave", max members.  Only
     * groups an admin marked open (im:{g:<gid>}:meta open 1) are joined
     * by their users; anyone may leave.
     */

    { ngx_string(
          "local g = 'im:{g:' .. ARGV[1] .. '}:members'\n"
          "if ARGV[3] == 'leave' then\n"
          "  if redis.call('SREM', g, ARGV[2]) == 0 then\n"
          "    return redis.error_reply('NOT_FOUND not a member')\n"
          "  end\n"
          "  return 1\n"
          "end\n"
          "if redis.call('SISMEMBER', g, ARGV[2]) == 1 then return 1 end\n"
          "local meta = 'im:{g:' .. ARGV[1] .. '}:meta'\n"
          "if redis.call('HGET', meta, 'open') ~= '1' then\n"
          "  if redis.call('EXISTS', g) == 0\n"
          "     and redis.call('EXISTS', meta) == 0 then\n"
          "    return redis.error_reply('NOT_FOUND no such group')\n"
          "  end\n"
          "  return redis.error_reply('FORBIDDEN the group is closed')\n"
          "end\n"
          "if redis.call('SCARD', g) >= tonumber(ARGV[4]) then\n"
          "  return redis.error_reply('TOO_LARGE the group is full')\n"
          "end\n"
          "redis.call('SADD', g, ARGV[2])\n"
          "return 1\n"),
      "", 0 },

    /*
     * logout: ARGV: user, session.  The last session of a user records
     * when it was seen and tells the watchers it is offline.
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_LIVE
          "local rk = 'im:{u:' .. ARGV[1] .. '}:routes'\n"
          "redis.call('HDEL', rk, ARGV[2])\n"
          "if live(rk) > 0 then return 0 end\n"
          "local ms = now()\n"
          "redis.call('SET', 'im:{u:' .. ARGV[1] .. '}:seen', ms)\n"
          "redis.call('PUBLISH', 'im:presence:' .. ARGV[1], '0 ' .. ms)\n"
          "return 1\n"),
      "", 0 },

    /*
     * presence: ARGV: users.  Returns {user, online, last seen ms, ...},
     * online while one of the user's routes is alive (dead ones go).
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_LIVE
          "local out = {}\n"
          "for _, u in ipairs(ARGV) do\n"
          "  local online = 0\n"
          "  if live('im:{u:' .. u .. '}:routes') > 0 then online = 1 end\n"
          "  local seen = redis.call('GET', 'im:{u:' .. u .. '}:seen')\n"
          "  out[#out + 1] = u\n"
          "  out[#out + 1] = online\n"
          "  out[#out + 1] = tonumber(seen or '0')\n"
          "end\n"
          "return out\n"),
      "", 0 },

    /*
     * range: KEYS inbox; ARGV: from, to ("-", "+" or "(<id>"), count,
     * bytes, "1" for newest first.  Returns {more, entry, ...}: at most
     * count entries and, past the first, at most bytes of their data,
     * read a few at a time so that Redis never holds much more.
     */

    { ngx_string(
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
     * reroute: KEYS routes; ARGV: session, channel, user.  The route of a
     * signed-in session, set again after a ready; if none of the user's
     * routes was alive, watchers were told offline: now online again.
     */

    { ngx_string(
          NGX_STREAM_IM_LUA_LIVE
          "local n = live(KEYS[1])\n"
          "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
          "if n == 0 then\n"
          "  redis.call('PUBLISH', 'im:presence:' .. ARGV[3], '1 ' .. now())\n"
          "end\n"
          "return 1\n"),
      "", 0 },

    /*
     * revoked: KEYS revoked; ARGV: token iat in ms.  Returns 1 when the
     * user's tokens issued before then are refused.
     */

    { ngx_string(
          "local rv = redis.call('GET', KEYS[1])\n"
          "if rv and tonumber(ARGV[1]) < tonumber(rv) then return 1 end\n"
          "return 0\n"),
      "", 0 },

    /*
     * kick: KEYS routes, revoked; ARGV: user, device or "" for all, error
     * code, reason, and for a revocation the time in ms before which the
     * user's tokens are refused.  Each worker holding such a session
     * gets one message on its channel:
     *
     *     x<code>\n\n<user>\n<device>\n<reason>
     *
     * Returns how many live sessions it named.
     */

    { ngx_string(
          "if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) end\n"
          "local r = redis.call('HGETALL', KEYS[1])\n"
          "local alive, out, n = {}, {}, 0\n"
          "for i = 1, #r, 2 do\n"
          "  local ch = r[i + 1]\n"
          "  if alive[ch] == nil then\n"
          "    alive[ch] = redis.call('EXISTS', ch .. ':alive')\n"
          "  end\n"
          "  if alive[ch] == 0 then\n"
          "    redis.call('HDEL', KEYS[1], r[i])\n"
          "  elseif ARGV[2] == '' or\n"
          "         string.match(r[i], ':([^:]*)$') == ARGV[2] then\n"
          "    n = n + 1\n"
          "    out[ch] = true\n"
          "  end\n"
          "end\n"
          "for ch in pairs(out) do\n"
          "  redis.call('PUBLISH', ch, 'x' .. ARGV[3] .. '\\n\\n' .. ARGV[1]\n"
          "             .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[4])\n"
          "end\n"
          "return n\n"),
      "", 0 },

    /*
     * devices: ARGV: users.  Returns {user, online, last seen ms,
     * {device, ...}, ...}: the devices of the live routes (dead ones go).
     */

    { ngx_string(
          "local out, alive = {}, {}\n"
          "for _, u in ipairs(ARGV) do\n"
          "  local rk = 'im:{u:' .. u .. '}:routes'\n"
          "  local r = redis.call('HGETALL', rk)\n"
          "  local devices, seen = {}, {}\n"
          "  for i = 1, #r, 2 do\n"
          "    local ch = r[i + 1]\n"
          "    if alive[ch] == nil then\n"
          "      alive[ch] = redis.call('EXISTS', ch .. ':alive')\n"
          "    end\n"
          "    if alive[ch] == 1 then\n"
          "      local d = string.match(r[i], ':([^:]*)$') or ''\n"
          "      if not seen[d] then\n"
          "        seen[d] = true\n"
          "        devices[#devices + 1] = d\n"
          "      end\n"
          "    else\n"
          "      redis.call('HDEL', rk, r[i])\n"
          "    end\n"
          "  end\n"
          "  local last = redis.call('GET', 'im:{u:' .. u .. '}:seen')\n"
          "  out[#out + 1] = u\n"
          "  out[#out + 1] = #devices > 0 and 1 or 0\n"
          "  out[#out + 1] = tonumber(last or '0')\n"
          "  out[#out + 1] = devices\n"
          "end\n"
          "return out\n"),
      "", 0 },

    /*
     * admin group: KEYS members, meta; ARGV: "put" open | "delete" |
     * "get" | "members" max, count to add, user to add..., to remove...
     * A group exists while it has members or meta.  put returns 1 when it
     * created the group; delete how many keys went; get {open, member,
     * ...}; members {added, removed, size}, all or nothing.
     */

    { ngx_string(
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
