/** IPv4 arithmetic for pools and blocks. Addresses are handled as unsigned 32-bit integers. */
import { InputError } from '@berth/shared/errors';

export type Cidr = { base: number; prefix: number; size: number; text: string };

export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4) throw new InputError(`not an IPv4 address: ${ip}`);
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) throw new InputError(`not an IPv4 address: ${ip}`);
    n = n * 256 + Number(p);
  }
  return n;
}

export function intToIp(n: number): string {
  return [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Parses `198.18.0.0/16`; the address must be the network's first. */
export function parseCidr(text: string): Cidr {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(text.trim());
  if (!m?.[1] || !m[2]) throw new InputError(`not an IPv4 CIDR: ${text}`);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 32) throw new InputError(`prefix length must be 8..32: ${text}`);
  const base = ipToInt(m[1]);
  const size = 2 ** (32 - prefix);
  if (base % size !== 0)
    throw new InputError(`${text} is not a network address (did you mean ${intToIp(base - (base % size))}/${prefix}?)`);
  return { base, prefix, size, text: `${m[1]}/${prefix}` };
}

export function contains(cidr: Cidr, ip: number): boolean {
  return ip >= cidr.base && ip < cidr.base + cidr.size;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}

export const BLOCK_SIZE = 16;
export const BLOCK_PREFIX = 28;

/** The blocks of 16 of a pool, in order. */
export function blockCount(pool: Cidr): number {
  return Math.max(1, Math.floor(pool.size / BLOCK_SIZE));
}

export function blockAt(pool: Cidr, index: number): Cidr {
  const size = Math.min(BLOCK_SIZE, pool.size);
  const base = pool.base + index * size;
  return { base, prefix: 32 - Math.log2(size), size, text: `${intToIp(base)}/${32 - Math.log2(size)}` };
}

/**
 * Offsets of a block that are never handed out: the pool's network address, its broadcast
 * address and the gateway.
 */
export function reservedOffsets(pool: Cidr, block: Cidr, gateway: number | undefined): Set<number> {
  const out = new Set<number>();
  for (let i = 0; i < block.size; i++) {
    const ip = block.base + i;
    if (ip === pool.base || ip === pool.base + pool.size - 1 || ip === gateway) out.add(i);
  }
  return out;
}
