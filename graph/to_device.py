"""sendToDevice: opaque messages from this device to single devices (resolvers/to_device.py)."""

from __future__ import annotations

import strawberry

from graph.context import Info
from resolvers import to_device


@strawberry.input(description="One opaque message for one device (a `Device.id`).")
class ToDeviceInput:
    device_id: strawberry.ID
    type: str = strawberry.field(description="What the payload is: 1 to 64 visible ASCII characters.")
    payload: str = strawberry.field(
        description="Opaque to the server (typically Olm-encrypted): at most PARLEY_MAX_TO_DEVICE_PAYLOAD_BYTES bytes."
    )


@strawberry.type
class ToDeviceMutation:
    @strawberry.mutation(
        description="Sends opaque messages to single devices: your own other devices and the devices of users "
        "you share a conversation with. Each addressed device gets a ToDeviceEvent, durable and in the order "
        "given; the user's other devices never see it. At most 100 messages a call; each counts against "
        "PARLEY_TO_DEVICE_PER_MINUTE (RATE_LIMITED past it). Any other device is NOT_FOUND (nothing is sent); "
        "a user who blocked you gets nothing, and you are not told."
    )
    async def send_to_device(self, info: Info, messages: list[ToDeviceInput]) -> bool:
        viewer = await info.context.require_viewer()
        await to_device.send_to_device(
            info.context.services,
            viewer,
            [to_device.OutgoingToDevice(str(m.device_id), m.type, m.payload) for m in messages],
        )
        return True
