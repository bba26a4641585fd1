import { describe, expect, it } from "vitest";
import { crc32c } from "../src/crc32c";

const ascii = (s: string) => new TextEncoder().encode(s);

describe("crc32c", () => {
  it("matches the standard check value of '123456789'", () => {
    expect(crc32c(ascii("123456789"))).toBe(0xe3069283);
  });

  it("matches the RFC 3720 vector of 32 zero bytes", () => {
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
  });

  it("matches the RFC 3720 vector of 32 bytes 0xff", () => {
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
  });

  it("is 0 for no bytes", () => {
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it("continues across pieces and ignores the byteOffset of a view", () => {
    const data = ascii("the quick brown fox jumps over the lazy dog, twice over");
    const whole = crc32c(data);
    expect(crc32c(data.subarray(13), crc32c(data.subarray(0, 13)))).toBe(whole);
    const shifted = new Uint8Array(data.length + 3);
    shifted.set(data, 3);
    expect(crc32c(shifted.subarray(3))).toBe(whole);
  });
});
