import { randomUUID } from 'node:crypto';

/** oslo.middleware's RequestId accepts an inbound global request id only in this exact form. */
const REQUEST_ID = /^req-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$/;

/** The client's X-Openstack-Request-Id when well-formed, else a new one. */
export function requestIdOf(value: string | string[] | undefined): string {
  return typeof value === 'string' && REQUEST_ID.test(value) ? value : `req-${randomUUID()}`;
}
