from twisted.application.service import ServiceMaker

coapbridge = ServiceMaker("coapbridge", "bridge.tap",
                          "CoAP front end for ThingsBoard MQTT gateway platforms", "coapbridge")
