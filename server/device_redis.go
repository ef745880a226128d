package server

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// luaRegisterDevice is registerDevice (device.go) as a script, so that
// it is one atomic step with the box it may empty: the script defines
// forgetBox(p, uid, slot), which empties the box of uid's device in slot.
//
// KEYS: {u:<uid>}:devices. ARGV: device id, now ms, deviceTouchMs, max
// known devices, prefix, uid. Returns {slot, 1 if a device was forgotten
// else 0, its id}.
const luaRegisterDevice = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local slot, since, last = string.match(cur, '^(%d+):(%-?%d+):(%-?%d+):')
  if tonumber(ARGV[2]) - tonumber(last) >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], ARGV[1], slot .. ':' .. since .. ':' .. ARGV[2] .. ':' .. ARGV[1])
  end
  return {tonumber(slot), 0, ''}
end
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], '0:0:' .. ARGV[2] .. ':' .. ARGV[1])
  return {0, 0, ''}
end
local used, oldest, oldestLast, oldestSlot = {}, nil, nil, nil
for i = 1, #all, 2 do
  local slot, since, last = string.match(all[i + 1], '^(%d+):(%-?%d+):(%-?%d+):')
  slot, last = tonumber(slot), tonumber(last)
  used[slot] = true
  if not oldest or last < oldestLast then oldest, oldestLast, oldestSlot = all[i], last, slot end
end
local forgot, evicted = 0, ''
if #all / 2 >= tonumber(ARGV[4]) then
  redis.call('HDEL', KEYS[1], oldest)
  used[oldestSlot] = nil
  forgot, evicted = 1, oldest
  forgetBox(ARGV[5], ARGV[6], oldestSlot)
end
local slot = 0
while used[slot] do slot = slot + 1 end
redis.call('HSET', KEYS[1], ARGV[1], slot .. ':' .. ARGV[2] .. ':' .. ARGV[2] .. ':' .. ARGV[1])
return {slot, forgot, evicted}`

// scriptRegisterDevice is luaRegisterDevice on one Redis: the forgotten
// box's inbox and the msg:<id> of what it held are other slots (on a
// cluster, the box and its bodies are under the user's tag:
// scriptClusterRegisterDevice).
var scriptRegisterDevice = guardedScript(`
local function forgetBox(p, uid, slot)
  local box = p .. 'inbox:' .. uid
  if slot ~= 0 then box = box .. ':' .. slot end
  for _, m in ipairs(redis.call('ZRANGE', box, 0, -1)) do
    local mk = p .. 'msg:' .. m
    if redis.call('HINCRBY', mk, 'refs', -1) <= 0 then redis.call('DEL', mk) end
  end
  redis.call('DEL', box)
end
` + luaRegisterDevice)

func (s *RedisStore) RegisterDevice(ctx context.Context, uid uint64, device string, nowMs int64) (DeviceReg, error) {
	keys, args := s.guard(ctx, []string{s.userTagKey(uid, "devices")}, device, nowMs, deviceTouchMs, maxKnownDevices, s.p, uid)
	script := scriptRegisterDevice
	if s.cluster {
		script = scriptClusterRegisterDevice
	}
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{script.EvalSha(ctx, p, keys, args...)}
	})
	if err != nil {
		return DeviceReg{}, err
	}
	res, err := cmds[0].(*redis.Cmd).Slice()
	if err != nil || len(res) != 3 {
		return DeviceReg{}, fmt.Errorf("store: register device reply %v: %w", res, redisErr(err))
	}
	slot, _ := res[0].(int64)
	forgot, _ := res[1].(int64)
	evicted, _ := res[2].(string)
	return DeviceReg{Slot: int(slot), Evicted: evicted, Forgot: forgot == 1}, nil
}

func (s *RedisStore) Devices(ctx context.Context, uid uint64) ([]Device, error) {
	vals, err := s.rdb.HVals(ctx, s.userTagKey(uid, "devices")).Result()
	if err != nil {
		return nil, redisErr(err)
	}
	out := make([]Device, 0, len(vals))
	for _, v := range vals {
		d, err := parseDevice(v)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}
