package server

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// scriptRegisterDevice is registerDevice (device.go) in Redis, so that it
// is one atomic step with the box it may empty.
//
// KEYS: {u:<uid>}:devices. ARGV: device id, now ms, deviceTouchMs, max
// known devices, prefix, uid. Computes the inbox of a forgotten device's
// box and the msg:<id> of what it held (other slots: the box moves under
// the user's tag in a cluster). Returns {slot, 1 if a device was
// forgotten else 0, its id}.
var scriptRegisterDevice = guardedScript(`
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
  local box = ARGV[5] .. 'inbox:' .. ARGV[6]
  if oldestSlot ~= 0 then box = box .. ':' .. oldestSlot end
  for _, m in ipairs(redis.call('ZRANGE', box, 0, -1)) do
    local mk = ARGV[5] .. 'msg:' .. m
    if redis.call('HINCRBY', mk, 'refs', -1) <= 0 then redis.call('DEL', mk) end
  end
  redis.call('DEL', box)
end
local slot = 0
while used[slot] do slot = slot + 1 end
redis.call('HSET', KEYS[1], ARGV[1], slot .. ':' .. ARGV[2] .. ':' .. ARGV[2] .. ':' .. ARGV[1])
return {slot, forgot, evicted}`)

func (s *RedisStore) RegisterDevice(ctx context.Context, uid uint64, device string, nowMs int64) (DeviceReg, error) {
	keys, args := s.guard(ctx, []string{s.userTagKey(uid, "devices")}, device, nowMs, deviceTouchMs, maxKnownDevices, s.p, uid)
	cmds, err := s.batch.do(ctx, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{scriptRegisterDevice.EvalSha(ctx, p, keys, args...)}
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
